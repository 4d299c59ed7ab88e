"""The `sql` MCP server: read-only SQL over an SQLite database.

By default it serves a bundled sample bookstore (authors, books, customers,
orders, order items); given a path it serves that SQLite file read-only.
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Annotated, Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from mcp_hub_servers.sql.database import QueryError, ReadOnlyDatabase

_READ_ONLY = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False)

SqlParam = str | int | float | bool | None
Params = Annotated[
    list[SqlParam] | dict[str, SqlParam] | None,
    Field(
        description=(
            "Values for placeholders: a list for '?' placeholders, or an object for ':name' placeholders. "
            "Always pass user-supplied values this way instead of pasting them into the SQL."
        )
    ),
]

MaxRows = Annotated[int, Field(ge=1, description="Maximum rows to return (the server caps it, 1000 by default).")]


class TableEntry(BaseModel):
    """A table or view."""

    name: str
    type: str = Field(description="'table' or 'view'")


class TableList(BaseModel):
    """Tables and views in the database."""

    database: str
    tables: list[TableEntry]


class ColumnInfo(BaseModel):
    """A column of a table or view."""

    name: str
    type: str = Field(description="declared SQLite type (may be empty)")
    not_null: bool
    default: str | None
    primary_key: bool


class TableDescription(BaseModel):
    """Schema of one table or view."""

    name: str
    type: str
    columns: list[ColumnInfo]
    row_count: int | None = Field(description="number of rows (null if counting took too long)")
    foreign_keys: list[str] = Field(description="'column -> table(column)' references")
    sql: str | None = Field(description="the CREATE statement")


class QueryResult(BaseModel):
    """Rows returned by a query."""

    columns: list[str]
    rows: list[list[Any]] = Field(description="one list of values per row, in column order")
    row_count: int = Field(description="number of rows returned here")
    truncated: bool = Field(description="true if more rows existed beyond max_rows")


def build_server(
    *,
    db_path: str | Path | None = None,
    max_rows_limit: int = 1000,
    timeout_seconds: float = 5.0,
) -> MCPServer:
    """Build the sql server.

    Args:
        db_path: SQLite file to serve read-only; None serves the bundled sample bookstore.
        max_rows_limit: the most rows one query may return.
        timeout_seconds: wall-clock budget of one statement.

    Raises:
        ValueError: if `db_path` is missing or is not an SQLite database.
    """
    if db_path is None:
        database = ReadOnlyDatabase.sample(timeout_seconds=timeout_seconds)
    else:
        database = ReadOnlyDatabase.open_file(db_path, timeout_seconds=timeout_seconds)

    server = MCPServer(
        "sql",
        version="1.0.0",
        instructions=(
            f"Read-only SQL (SQLite dialect) over the {database.label}. Call list_tables and "
            "describe_table before writing queries; run_query accepts SELECT/WITH statements only."
        ),
    )

    @server.tool(annotations=_READ_ONLY)
    def list_tables() -> TableList:
        """List the tables and views of the database. Start here to learn what data exists."""
        try:
            entries = [TableEntry(name=name, type=kind) for name, kind in database.tables()]
        except QueryError as exc:
            raise ToolError(str(exc)) from None
        return TableList(database=database.label, tables=entries)

    @server.tool(annotations=_READ_ONLY)
    def describe_table(
        table: Annotated[str, Field(description="Table or view name, as given by list_tables.")],
    ) -> TableDescription:
        """Show a table's or view's columns (name, type, NOT NULL, default, primary key), foreign keys,
        row count and CREATE statement."""
        try:
            info = database.describe(table)
        except QueryError as exc:
            raise ToolError(str(exc)) from None
        return TableDescription(
            name=info.name,
            type=info.kind,
            columns=[ColumnInfo(**vars(c)) for c in info.columns],
            row_count=info.row_count,
            foreign_keys=info.foreign_keys,
            sql=info.sql,
        )

    @server.tool(annotations=_READ_ONLY)
    def run_query(
        sql: Annotated[
            str,
            Field(
                description="One SQLite SELECT statement (WITH ... SELECT allowed), e.g. 'SELECT * FROM books LIMIT 5'."
            ),
        ],
        params: Params = None,
        max_rows: MaxRows = 100,
    ) -> QueryResult:
        """Run one read-only SQL query and return its columns and rows.

        Only SELECT / WITH statements are accepted; anything that would modify the database is refused.
        Results stop at max_rows (`truncated` tells whether more existed): add ORDER BY/LIMIT or
        aggregate for big tables. Long-running queries are stopped after a few seconds.
        """
        try:
            result = database.query(sql, params, min(max_rows, max_rows_limit))
        except QueryError as exc:
            raise ToolError(f"Query failed: {exc}") from None
        return QueryResult(
            columns=result.columns, rows=result.rows, row_count=len(result.rows), truncated=result.truncated
        )

    # The connection lives as long as the server; close it with the server, not at exit.
    weakref.finalize(server, database.close)
    return server
