"""The `notes` server: per-credential notes that persist, and never reveal the token."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.types import CallToolResult

from mcp_hub_servers.notes.server import build_server
from tests.servers.conftest import StdioCall, data, error_text, everything_said, hints

TOKEN_A = "tok-alice-7f3a9c2e51d04b6e"
TOKEN_B = "tok-bob-0c8d1e2f3a4b5c6d"
TOOL_CALLS: list[tuple[str, dict[str, Any]]] = [
    ("add_note", {"title": "t"}),
    ("list_notes", {}),
    ("get_note", {"note_id": 1}),
    ("search_notes", {"query": "x"}),
    ("delete_note", {"note_id": 1}),
]


async def test_tools_listed_with_hints(tmp_path: Path) -> None:
    async with Client(build_server(token=TOKEN_A, db_path=tmp_path / "n.db")) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == {name for name, _ in TOOL_CALLS}
    for name in ("list_notes", "get_note", "search_notes"):
        assert hints(tools[name]).read_only_hint is True and hints(tools[name]).idempotent_hint is True
    assert (
        hints(tools["add_note"]).read_only_hint is False and hints(tools["add_note"]).idempotent_hint is False
    )
    assert (
        hints(tools["delete_note"]).destructive_hint is True
        and hints(tools["delete_note"]).idempotent_hint is True
    )
    assert all(t.description and t.output_schema is not None for t in tools.values())


@pytest.mark.parametrize("token", [None, "", "   "])
async def test_every_tool_reports_the_missing_credential(tmp_path: Path, token: str | None) -> None:
    db = tmp_path / "n.db"
    async with Client(build_server(token=token, db_path=db)) as client:
        for name, arguments in TOOL_CALLS:
            message = error_text(await client.call_tool(name, arguments))
            assert "`notes` connection credential (field `token`) is missing" in message, name
    assert not db.exists()  # nothing was stored for nobody


async def test_add_get_list_search_delete(tmp_path: Path) -> None:
    async with Client(build_server(token=TOKEN_A, db_path=tmp_path / "n.db")) as client:
        first = data(
            await client.call_tool(
                "add_note",
                {
                    "title": "Groceries",
                    "body": "milk, eggs, 50% off_sale",
                    "tags": ["Home", "shopping", "home"],
                },
            )
        )
        second = data(
            await client.call_tool("add_note", {"title": "Hub idea", "body": "route MCP servers", "tags": ["work"]})
        )
        fetched = data(await client.call_tool("get_note", {"note_id": first["id"]}))
        listed = data(await client.call_tool("list_notes", {}))
        tagged = data(await client.call_tool("list_notes", {"tag": "WORK"}))
        page = data(await client.call_tool("list_notes", {"limit": 1, "offset": 1}))
        words = data(await client.call_tool("search_notes", {"query": "EGGS milk"}))
        literal = data(await client.call_tool("search_notes", {"query": "50%"}))
        underscore = data(await client.call_tool("search_notes", {"query": "o_f"}))
        by_tag = data(await client.call_tool("search_notes", {"query": "shop"}))
        deleted = data(await client.call_tool("delete_note", {"note_id": first["id"]}))
        again = data(await client.call_tool("delete_note", {"note_id": first["id"]}))
        gone = await client.call_tool("get_note", {"note_id": first["id"]})
        home = data(await client.call_tool("list_notes", {"tag": "home"}))
        third = data(await client.call_tool("add_note", {"title": "Later"}))
    assert (first["id"], second["id"]) == (1, 2)
    assert first["tags"] == ["home", "shopping"]
    assert fetched == first
    assert [n["id"] for n in listed["notes"]] == [2, 1] and listed["total"] == 2
    assert listed["notes"][1]["preview"] == "milk, eggs, 50% off_sale"
    assert [n["title"] for n in tagged["notes"]] == ["Hub idea"] and tagged["total"] == 1
    assert [n["id"] for n in page["notes"]] == [1] and page["total"] == 2
    assert [n["id"] for n in words["notes"]] == [1]
    assert [n["id"] for n in literal["notes"]] == [1]
    assert underscore["notes"] == []  # '_' is literal (as a wildcard it would match "off")
    assert [n["id"] for n in by_tag["notes"]] == [1]
    assert deleted == {"id": 1, "deleted": True} and again == {"id": 1, "deleted": False}
    assert "no note with id 1" in error_text(gone)
    assert home["total"] == 0  # the tags went with the note
    assert third["id"] == 3  # ids are never reused


async def test_input_is_validated(tmp_path: Path) -> None:
    async with Client(build_server(token=TOKEN_A, db_path=tmp_path / "n.db")) as client:
        blank = await client.call_tool("add_note", {"title": "   "})
        many_tags = await client.call_tool("add_note", {"title": "t", "tags": [f"t{i}" for i in range(21)]})
        listed = data(await client.call_tool("list_notes", {}))
    assert "must not be blank" in error_text(blank)
    assert "at most 20 tags" in error_text(many_tags)
    assert listed["total"] == 0


async def test_two_tokens_see_disjoint_notes(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    async with (
        Client(build_server(token=TOKEN_A, db_path=db)) as alice,
        Client(build_server(token=TOKEN_B, db_path=db)) as bob,
    ):
        a1 = data(await alice.call_tool("add_note", {"title": "Alice's plan", "body": "shared word", "tags": ["x"]}))
        b1 = data(await bob.call_tool("add_note", {"title": "Bob's plan", "body": "shared word", "tags": ["x"]}))
        alice_list = data(await alice.call_tool("list_notes", {}))
        bob_list = data(await bob.call_tool("list_notes", {"tag": "x"}))
        bob_search = data(await bob.call_tool("search_notes", {"query": "Alice"}))
        alice_search = data(await alice.call_tool("search_notes", {"query": "shared"}))
        bob_deletes_alices = data(await bob.call_tool("delete_note", {"note_id": 2}))
        alice_gets_2 = await alice.call_tool("get_note", {"note_id": 2})
        alice_still_has = data(await alice.call_tool("get_note", {"note_id": a1["id"]}))
    assert a1["id"] == 1 and b1["id"] == 1  # ids are per owner
    assert [n["title"] for n in alice_list["notes"]] == ["Alice's plan"]
    assert [n["title"] for n in bob_list["notes"]] == ["Bob's plan"]
    assert bob_search["notes"] == []
    assert [n["title"] for n in alice_search["notes"]] == ["Alice's plan"]
    assert bob_deletes_alices["deleted"] is False
    assert error_text(alice_gets_2)
    assert alice_still_has["title"] == "Alice's plan"


async def test_notes_persist_across_server_instances(tmp_path: Path) -> None:
    db = tmp_path / "persist.db"
    async with Client(build_server(token=TOKEN_A, db_path=db)) as client:
        created = data(await client.call_tool("add_note", {"title": "Remember", "body": "the milk", "tags": ["home"]}))
    async with Client(build_server(token=TOKEN_A, db_path=db)) as client:
        fetched = data(await client.call_tool("get_note", {"note_id": created["id"]}))
        listed = data(await client.call_tool("list_notes", {"tag": "home"}))
    async with Client(build_server(token=TOKEN_B, db_path=db)) as client:
        other = data(await client.call_tool("list_notes", {}))
    assert fetched == created
    assert listed["total"] == 1
    assert other["total"] == 0


async def test_token_never_appears_in_output_or_storage(tmp_path: Path) -> None:
    db = tmp_path / "secret.db"
    outputs: list[CallToolResult] = []
    async with Client(build_server(token=TOKEN_A, db_path=db)) as client:
        outputs.append(await client.call_tool("add_note", {"title": "Note", "body": "text", "tags": ["t"]}))
        outputs.append(await client.call_tool("list_notes", {}))
        outputs.append(await client.call_tool("get_note", {"note_id": 1}))
        outputs.append(await client.call_tool("get_note", {"note_id": 99}))
        outputs.append(await client.call_tool("search_notes", {"query": "note"}))
        outputs.append(await client.call_tool("delete_note", {"note_id": 1}))
        outputs.append(await client.call_tool("add_note", {"title": ""}))
        tools = await client.list_tools()
    seen = "\n".join(everything_said(r) for r in outputs) + tools.model_dump_json()
    assert TOKEN_A not in seen
    assert "tok-alice" not in seen
    stored = b"".join(p.read_bytes() for p in tmp_path.iterdir())  # the database and its WAL
    assert TOKEN_A.encode() not in stored
    assert hashlib.sha256(TOKEN_A.encode()).hexdigest().encode() in stored  # only the digest is kept


async def test_served_over_stdio(call_over_stdio: StdioCall, tmp_path: Path) -> None:
    db = tmp_path / "stdio.db"
    env = {"NOTES_TOKEN": TOKEN_A, "NOTES_DB": str(db)}
    result, tools = await call_over_stdio("notes", "add_note", {"title": "From stdio", "tags": ["cli"]}, env=env)
    assert set(tools) == {name for name, _ in TOOL_CALLS}
    assert data(result)["title"] == "From stdio"
    assert TOKEN_A not in everything_said(result)

    result, _ = await call_over_stdio("notes", "list_notes", {"tag": "cli"}, env=env)
    assert data(result)["total"] == 1  # persisted across processes

    result, _ = await call_over_stdio("notes", "list_notes", {}, env={"NOTES_DB": str(db)})
    assert "credential (field `token`) is missing" in error_text(result)
    assert TOKEN_A not in (tmp_path / "notes.stderr.log").read_text()
