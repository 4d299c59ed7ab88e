"""The `sql` server: read-only queries over the sample bookstore or a user file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from mcp import Client

from mcp_hub_servers.sql.database import ReadOnlyDatabase
from mcp_hub_servers.sql.server import build_server
from tests.servers.conftest import StdioCall, data, error_text, hints

WRITES = [
    "DELETE FROM books",
    "UPDATE books SET price = 0",
    "INSERT INTO genres (name) VALUES ('x')",
    "DROP TABLE books",
    "CREATE TABLE t (a)",
    "ATTACH DATABASE ':memory:' AS other",
    "PRAGMA query_only = OFF",
    "VACUUM",
    "WITH doomed AS (SELECT 1) DELETE FROM books",
    "WITH x AS (SELECT 1) INSERT INTO genres (name) SELECT 'x' FROM x",
    "WITH x AS (SELECT 1) UPDATE sqlite_master SET sql = ''",
    "SELECT load_extension('/tmp/evil')",
    "SELECT readfile('/etc/passwd')",
    "SELECT writefile('/tmp/evil', 'x')",
    "SELECT * FROM pragma_compile_options",
    "SELECT 1; DELETE FROM books",
]


async def test_tools_listed_with_hints() -> None:
    async with Client(build_server()) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == {"list_tables", "describe_table", "run_query"}
    for tool in tools.values():
        assert hints(tool).read_only_hint is True and hints(tool).idempotent_hint is True
        assert tool.description and tool.output_schema is not None
    assert set(tools["run_query"].input_schema["properties"]) == {"sql", "params", "max_rows"}


async def test_list_and_describe_the_sample() -> None:
    async with Client(build_server()) as client:
        tables = data(await client.call_tool("list_tables", {}))
        books = data(await client.call_tool("describe_table", {"table": "Books"}))
        view = data(await client.call_tool("describe_table", {"table": "book_sales"}))
        missing = await client.call_tool("describe_table", {"table": "nope"})
    names = {t["name"]: t["type"] for t in tables["tables"]}
    assert names == {
        "authors": "table",
        "books": "table",
        "customers": "table",
        "genres": "table",
        "orders": "table",
        "order_items": "table",
        "book_sales": "view",
    }
    columns = {c["name"]: c for c in books["columns"]}
    assert list(columns)[:3] == ["book_id", "title", "author_id"]
    assert columns["book_id"]["primary_key"] is True and columns["price"]["type"] == "REAL"
    assert columns["title"]["not_null"] is True and columns["in_stock"]["default"] == "0"
    assert books["row_count"] == 55
    assert "author_id -> authors(author_id)" in books["foreign_keys"]
    assert books["sql"].startswith("CREATE TABLE books")
    assert view["type"] == "view" and view["row_count"] == 55
    assert "no table or view named 'nope'" in error_text(missing)


def test_sample_is_deterministic() -> None:
    first, second = ReadOnlyDatabase.sample(), ReadOnlyDatabase.sample()
    try:
        counts = {}
        for table in ("genres", "authors", "books", "customers", "orders", "order_items"):
            rows_a = first.query(f"SELECT * FROM {table} ORDER BY 1, 2", None, 10_000)
            rows_b = second.query(f"SELECT * FROM {table} ORDER BY 1, 2", None, 10_000)
            assert rows_a == rows_b
            counts[table] = len(rows_a.rows)
    finally:
        first.close()
        second.close()
    assert counts == {"genres": 8, "authors": 25, "books": 55, "customers": 60, "orders": 150, "order_items": 300}


async def test_run_query_with_parameters_and_row_limit() -> None:
    async with Client(build_server()) as client:
        dear = data(
            await client.call_tool(
                "run_query",
                {
                    "sql": "SELECT title, price FROM books WHERE price > ? ORDER BY price DESC",
                    "params": [15],
                    "max_rows": 2,
                },
            )
        )
        named = data(
            await client.call_tool(
                "run_query",
                {
                    "sql": "SELECT count(*) AS n FROM orders WHERE status = :status",
                    "params": {"status": "cancelled"},
                },
            )
        )
        joined = data(
            await client.call_tool(
                "run_query",
                {
                    "sql": (
                        "-- best seller\nWITH s AS (SELECT * FROM book_sales) "
                        "SELECT title, author FROM s ORDER BY revenue DESC LIMIT 1"
                    ),
                },
            )
        )
        injected = data(
            await client.call_tool(
                "run_query",
                {
                    "sql": "SELECT count(*) FROM books WHERE title = ?",
                    "params": ["x' OR '1'='1"],
                },
            )
        )
    assert dear["columns"] == ["title", "price"]
    assert dear["rows"] == [["Les Miserables", 17.99], ["War and Peace", 16.99]]
    assert dear["row_count"] == 2 and dear["truncated"] is True
    assert named == {"columns": ["n"], "rows": [[15]], "row_count": 1, "truncated": False}
    assert joined["rows"] == [["Anna Karenina", "Leo Tolstoy"]]
    assert injected["rows"] == [[0]]


async def test_server_caps_max_rows() -> None:
    async with Client(build_server(max_rows_limit=3)) as client:
        result = data(await client.call_tool("run_query", {"sql": "SELECT * FROM customers", "max_rows": 500}))
    assert result["row_count"] == 3 and result["truncated"] is True


@pytest.mark.parametrize("sql", WRITES)
async def test_writes_are_refused(sql: str) -> None:
    async with Client(build_server()) as client:
        result = await client.call_tool("run_query", {"sql": sql})
        after = data(await client.call_tool("run_query", {"sql": "SELECT count(*), sum(price) FROM books"}))
    message = error_text(result)
    assert "Query failed" in message
    assert after["rows"][0][0] == 55 and after["rows"][0][1] > 0


async def test_sql_errors_and_timeouts_are_tool_errors() -> None:
    async with Client(build_server(timeout_seconds=0.2)) as client:
        unknown = await client.call_tool("run_query", {"sql": "SELECT nope FROM books"})
        endless = await client.call_tool(
            "run_query",
            {
                "sql": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT max(x) FROM c",
            },
        )
        streaming = data(
            await client.call_tool(
                "run_query",
                {
                    "sql": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c",
                    "max_rows": 3,
                },
            )
        )
        huge = await client.call_tool("run_query", {"sql": "SELECT zeroblob(100000000)"})
        still_fine = data(await client.call_tool("run_query", {"sql": "SELECT 1"}))
    assert "no such column: nope" in error_text(unknown)
    assert "was stopped" in error_text(endless)
    assert streaming["rows"] == [[1], [2], [3]] and streaming["truncated"] is True
    assert "too big" in error_text(huge)
    assert still_fine["rows"] == [[1]]


async def test_only_listed_functions_run() -> None:
    """fts3_tokenizer handed out a native pointer (and its two-argument form swaps a tokenizer)."""
    async with Client(build_server()) as client:
        pointer = await client.call_tool("run_query", {"sql": "SELECT fts3_tokenizer('simple')"})
        unlisted = await client.call_tool("run_query", {"sql": "SELECT sqlite_compileoption_get(0)"})
        extension = await client.call_tool("run_query", {"sql": "SELECT load_extension('/tmp/evil.so')"})
        allowed = data(await client.call_tool("run_query", {
            "sql": "SELECT upper(substr(title, 1, 3)), json_extract('{\"a\": 2}', '$.a'), round(avg(price) OVER (), 1) > 0, "
                   "strftime('%Y', '2026-01-15'), count(*) OVER (), '{\"b\": 1}' ->> 'b' FROM books LIMIT 1"}))
        table_valued = data(await client.call_tool("run_query", {"sql": "SELECT value FROM json_each('[1, 2]')"}))
    assert "'fts3_tokenizer' is not allowed" in error_text(pointer)
    assert "'sqlite_compileoption_get' is not allowed" in error_text(unlisted)
    assert "'load_extension' is not allowed" in error_text(extension)
    assert allowed["rows"][0][1:] == [2, 1, "2026", 55, 1]
    assert table_valued["rows"] == [[1], [2]]


async def test_full_text_queries_on_a_served_file_still_work(tmp_path: Path) -> None:
    path = tmp_path / "texts.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE VIRTUAL TABLE docs USING fts4(body)")
        conn.execute("INSERT INTO docs VALUES ('hello world'), ('other things')")
    conn.close()
    async with Client(build_server(db_path=path)) as client:
        found = data(await client.call_tool("run_query", {"sql": "SELECT snippet(docs) FROM docs WHERE docs MATCH 'hello'"}))
        pointer = await client.call_tool("run_query", {"sql": "SELECT fts3_tokenizer('simple')"})
    assert found["rows"] == [["<b>hello</b> world"]]
    assert "not allowed" in error_text(pointer)


def test_every_allowed_function_is_a_known_builtin() -> None:
    """The list names SQLite built-ins, nothing a typo or an extension could capture."""
    import sqlite3 as sql

    from mcp_hub_servers.sql.database import ALLOWED_FUNCTIONS

    with sql.connect(":memory:") as conn:
        builtins = {row[0] for row in conn.execute("SELECT name FROM pragma_function_list")}
    conn.close()
    assert "fts3_tokenizer" in builtins and "fts3_tokenizer" not in ALLOWED_FUNCTIONS
    # Newer SQLite versions add some of the listed names; each listed name that exists here is a built-in.
    assert {"count", "upper", "json_extract", "strftime"} <= ALLOWED_FUNCTIONS & builtins


def make_user_db(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE readings (id INTEGER PRIMARY KEY, sensor TEXT, value REAL, raw BLOB)")
        conn.executemany(
            "INSERT INTO readings (sensor, value, raw) VALUES (?, ?, ?)",
            [("a", 1.5, b"\x01\x02"), ("b", 2.5, None), ("a", 3.0, None)],
        )
    conn.close()


async def test_serves_a_user_file_read_only(tmp_path: Path) -> None:
    db = tmp_path / "user.sqlite"
    make_user_db(db)
    before = db.read_bytes()
    async with Client(build_server(db_path=db)) as client:
        tables = data(await client.call_tool("list_tables", {}))
        rows = data(
            await client.call_tool(
                "run_query",
                {
                    "sql": "SELECT sensor, avg(value), max(raw) FROM readings GROUP BY sensor ORDER BY sensor",
                },
            )
        )
        write = await client.call_tool("run_query", {"sql": "WITH x AS (SELECT 1) DELETE FROM readings"})
    assert tables["database"] == "user.sqlite" and [t["name"] for t in tables["tables"]] == ["readings"]
    assert rows["rows"] == [["a", 2.25, "base64:AQI="], ["b", 2.5, None]]
    assert "only reading is allowed" in error_text(write)
    assert db.read_bytes() == before
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM readings").fetchone() == (3,)
    conn.close()


def test_bad_database_paths_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not found"):
        build_server(db_path=tmp_path / "missing.sqlite")
    junk = tmp_path / "junk.sqlite"
    junk.write_text("this is not a database, just text " * 100)
    with pytest.raises(ValueError, match="not a readable SQLite database"):
        build_server(db_path=junk)


async def test_served_over_stdio(call_over_stdio: StdioCall, tmp_path: Path) -> None:
    result, tools = await call_over_stdio("sql", "run_query", {"sql": "SELECT count(*) FROM books"})
    assert "describe_table" in tools
    assert data(result)["rows"] == [[55]]

    db = tmp_path / "user.sqlite"
    make_user_db(db)
    result, _ = await call_over_stdio(
        "sql", "run_query", {"sql": "SELECT count(*) FROM readings"}, env={"SQL_DB_PATH": str(db)}
    )
    assert data(result)["rows"] == [[3]]
