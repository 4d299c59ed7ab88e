"""Golden vectors for the two hashes stored data depends on: the audit chain's `chain_hash` and `tool_hash`.

The expected values are computed here with bare `hashlib` over canonical JSON written out by hand
(keys sorted, `,` and `:` without spaces, UTF-8 with non-ASCII kept as is), and pinned as hex: an
accidental change of either hash (a field, the separators, the encoding, the link between records)
would break every stored chain and tool pin, so it breaks this test first.
"""

from __future__ import annotations

import hashlib
import json

import mcp.types as types

from mcp_hub.audit.record import GENESIS, AuditRecord, chain_hash
from mcp_hub.tool_hash import tool_hash

RECORD = AuditRecord(
    id="rec_1", tenant="default", kind="tool_call", source="direct", completion_id=None, correlation_id="corr-é",
    key_id=None, server_name="hub/calc", server_ref="hub/calc@1.0.0", tool_name="evaluate", tool_hash="ab" * 32,
    arguments='{"expression":"2+2"}', result='{"result":"4"}', result_bytes=14, result_sha256="cd" * 32,
    result_truncated=False, is_error=False, error_code=None, duration_ms=3, started_at=1767225600000000,
    ended_at=1767225600003000, model=None, turn=None, seq=1, prev_hash=GENESIS,
)
# Every field but `hash`, in key order, written out: a field added, renamed or encoded differently shows here.
RECORD_CANONICAL = (
    '{"arguments":"{\\"expression\\":\\"2+2\\"}","completion_id":null,"correlation_id":"corr-é","duration_ms":3,'
    '"ended_at":1767225600003000,"error_code":null,"id":"rec_1","is_error":false,"key_id":null,"kind":"tool_call",'
    '"model":null,"prev_hash":"' + "0" * 64 + '","result":"{\\"result\\":\\"4\\"}","result_bytes":14,'
    '"result_sha256":"' + "cd" * 32 + '","result_truncated":false,"seq":1,"server_name":"hub/calc",'
    '"server_ref":"hub/calc@1.0.0","source":"direct","started_at":1767225600000000,"tenant":"default",'
    '"tool_hash":"' + "ab" * 32 + '","tool_name":"evaluate","turn":null}'
)
RECORD_HASH = "cde3571533a77082e0ddb4ba2cfedd40adfc528add49776c7029dcf448763371"

TOOL = types.Tool(name="évaluer", description="Evaluate an expression",
                  input_schema={"type": "object", "properties": {"x": {"type": "string"}}, "required": ["x"]},
                  title="ignored", annotations=types.ToolAnnotations(read_only_hint=True))
TOOL_CANONICAL = ('{"description":"Evaluate an expression","inputSchema":{"properties":{"x":{"type":"string"}},'
                  '"required":["x"],"type":"object"},"name":"évaluer"}')
TOOL_HASH = "7e9f464adc5ebfbb3b5c0f7ee7dc6dadb2995cbd23203106182ff457a72792d4"


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def test_the_canonical_json_is_the_documented_form() -> None:
    canonical = json.dumps(RECORD.content(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert canonical == RECORD_CANONICAL


def test_chain_hash_golden_vector() -> None:
    # hash = SHA-256(prev_hash + "\n" + canonical JSON of every other field), as README "Tamper evidence" says.
    expected = sha256(f"{GENESIS}\n{RECORD_CANONICAL}")
    assert expected == RECORD_HASH
    assert chain_hash(GENESIS, RECORD.content()) == RECORD_HASH


def test_chain_hash_links_to_the_previous_hash() -> None:
    second = {"b": [1, {"z": None, "a": "ü"}], "a": True}
    expected = sha256(f"{RECORD_HASH}\n" + '{"a":true,"b":[1,{"a":"ü","z":null}]}')
    assert chain_hash(RECORD_HASH, second) == expected
    assert chain_hash(GENESIS, second) != expected


def test_tool_hash_golden_vector() -> None:
    # Name, description and input schema only: the title and annotations are left out.
    assert sha256(TOOL_CANONICAL) == TOOL_HASH
    assert tool_hash(TOOL) == TOOL_HASH
    bare = types.Tool(name=TOOL.name, description=TOOL.description, input_schema=TOOL.input_schema)
    assert tool_hash(bare) == TOOL_HASH
