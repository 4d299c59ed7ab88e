"""The HTTP API: listings, direct tool calls, and the error shape for every kind of bad input."""

from __future__ import annotations

from typing import Any

import httpx2
import pytest

ERROR_KEYS = {"message", "type", "param", "code"}


def assert_error(response: httpx2.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body["error"]) == ERROR_KEYS
    assert body["error"]["code"] == code
    assert body["code"] == code and body["message"] == body["error"]["message"]  # Dedalus SDK reads the top level
    assert "Traceback" not in response.text
    return body


async def test_healthz(api: httpx2.AsyncClient) -> None:
    response = await api.get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert response.json()["servers"] == 1


async def test_list_and_show_servers(api: httpx2.AsyncClient) -> None:
    listing = (await api.get("/v1/servers")).json()
    assert [s["slug"] for s in listing["data"]] == ["test/probe"]
    assert listing["data"][0]["kind"] == "hosted"
    assert (await api.get("/v1/servers", params={"tag": "nope"})).json()["data"] == []
    detail = (await api.get("/v1/servers/test/probe")).json()
    assert detail["versions"][0] == {"version": "1.0.0", "kind": "hosted", "transport": "stdio", "deprecated": False}
    tools = {tool["name"]: tool for tool in detail["live"]["tools"]}
    assert tools["echo"]["inputSchema"]["properties"]["text"]["type"] == "string"
    assert tools["echo"]["annotations"]["readOnlyHint"] is True


async def test_direct_tool_call(api: httpx2.AsyncClient) -> None:
    response = await api.post("/v1/tools/call", json={"server": "test/probe", "tool": "echo", "arguments": {"text": "hi"}})
    assert response.status_code == 200
    record = response.json()
    assert record["server_name"] == "test/probe" and record["tool_name"] == "echo"
    assert record["arguments"] == {"text": "hi"}
    assert record["result"] == {"result": "hi"}
    assert record["is_error"] is False and isinstance(record["duration_ms"], int)


async def test_tool_error_is_data_not_an_http_error(api: httpx2.AsyncClient) -> None:
    response = await api.post("/v1/tools/call", json={"server": "test/probe", "tool": "fail", "arguments": {"message": "x"}})
    assert response.status_code == 200
    assert response.json()["is_error"] is True
    unknown = await api.post("/v1/tools/call", json={"server": "test/probe", "tool": "no_such_tool"})
    assert unknown.status_code == 200 and unknown.json()["is_error"] is True


async def test_spec_object_and_version_forms(api: httpx2.AsyncClient) -> None:
    for server in ("test/probe@1.0.0", "test/probe@^1", {"slug": "test/probe", "version": "1.0.0"},
                   {"name": "mine", "slug": "test/probe"}):
        response = await api.post("/v1/tools/call", json={"server": server, "tool": "echo", "arguments": {"text": "v"}})
        assert response.status_code == 200, response.text
        assert response.json()["result"] == {"result": "v"}
    assert response.json()["server_name"] == "mine"


@pytest.mark.parametrize(
    ("body", "status", "code", "fragment"),
    [
        ({"server": "test/prob", "tool": "echo"}, 404, "server_not_found", "test/probe"),
        ({"server": "test/probe@7", "tool": "echo"}, 404, "version_not_found", "1.0.0"),
        ({"server": "nonsense", "tool": "echo"}, 400, "invalid_spec", "org/name"),
        ({"server": "test/probe"}, 400, "invalid_request", "tool"),
        ({"server": "test/probe", "tool": ""}, 400, "invalid_request", "tool"),
        ({"server": "test/probe", "tool": "echo", "arguments": [1]}, 400, "invalid_request", "arguments"),
        ({"server": 12, "tool": "echo"}, 400, "invalid_request", "server"),
        ({"server": "test/probe", "tool": "echo", "bogus": 1}, 400, "invalid_request", "bogus"),
        ({"server": "test/probe", "tool": "echo", "credentials": {"values": {}}}, 400, "invalid_request", "connection_name"),
        ([1, 2], 400, "invalid_request", "JSON object"),
    ],
)
async def test_bad_tool_calls(api: httpx2.AsyncClient, body: Any, status: int, code: str, fragment: str) -> None:
    body = assert_error(await api.post("/v1/tools/call", json=body), status, code)
    assert fragment in body["error"]["message"] or fragment == body["error"]["param"]


JSON = {"content-type": "application/json"}


async def test_malformed_and_oversized_bodies(api: httpx2.AsyncClient) -> None:
    assert_error(await api.post("/v1/tools/call", content=b"{not json", headers=JSON), 400, "invalid_json")
    assert_error(await api.post("/v1/tools/call", content=b"\xff\xfe", headers=JSON), 400, "invalid_json")
    assert_error(await api.post("/v1/tools/call", content=b"", headers=JSON), 400, "invalid_json")
    # NaN and Infinity are not JSON: a 400 here, not a 500 once the body is sent on to a provider.
    nan = b'{"model": "openai/gpt-test", "messages": [{"role": "user", "content": "hi"}], "top_k": NaN}'
    assert_error(await api.post("/v1/chat/completions", content=nan, headers=JSON), 400, "invalid_json")
    infinity = b'{"server": "test/probe", "tool": "echo", "x": Infinity}'
    assert_error(await api.post("/v1/tools/call", content=infinity, headers=JSON), 400, "invalid_json")
    huge = b" " * (4 * 1024 * 1024 + 1)
    assert_error(await api.post("/v1/tools/call", content=huge, headers=JSON), 413, "body_too_large")


async def test_unknown_routes_and_methods(api: httpx2.AsyncClient) -> None:
    assert_error(await api.get("/v1/nothing"), 404, "not_found")
    assert_error(await api.delete("/v1/servers"), 405, "method_not_allowed")
    assert_error(await api.get("/v1/tools/call"), 405, "method_not_allowed")
    body = assert_error(await api.get("/v1/servers/test/prob"), 404, "server_not_found")
    assert "test/probe" in body["message"]
    assert_error(await api.get("/v1/servers/test/probe", params={"version": "^9"}), 400, "version_not_found")


async def test_unreachable_server_is_an_error_record(api: httpx2.AsyncClient) -> None:
    from .conftest import free_port

    url = f"http://127.0.0.1:{free_port()}/mcp"  # nothing listens there
    response = await api.post("/v1/tools/call", json={"server": url, "tool": "echo"})
    assert response.status_code == 200
    record = response.json()
    assert record["is_error"] is True and record["error_code"] == "connect_failed"
    assert record["mcp_server_errors"][url]["code"] == "connect_failed"
    assert record["mcp_server_errors"][url]["recommendation"]
