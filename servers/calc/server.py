"""The `calc` MCP server: safe arithmetic and unit conversion.

Expressions are parsed and walked against a whitelist (no `eval`); units come
from a hand-written table. Everything is pure computation: read-only,
idempotent, offline.
"""

from __future__ import annotations

from typing import Annotated

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from mcp_hub_servers.calc.expression import (
    CONSTANTS,
    FUNCTIONS,
    MAX_EXPRESSION_LENGTH,
    CalcError,
    evaluate,
    format_number,
)
from mcp_hub_servers.calc.units import UnitError, UnitTable

_PURE = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False)

_EVALUATE_DESCRIPTION = f"""Evaluate an arithmetic expression exactly as a calculator would and return the number.

Supports numbers (integers are exact and arbitrary-precision up to about 1000 digits; decimals
and 1.5e-3 notation), + - * / // (floor division) % (modulo) ** (power), unary minus and
parentheses. Functions: {", ".join(FUNCTIONS)} (log(x) is natural, log(x, base) any base;
trigonometry uses radians; round(x, n) rounds half away from zero). Constants: {", ".join(CONSTANTS)}.
Use ** for powers (^ is refused). No variables, assignments or other Python."""


class Evaluation(BaseModel):
    """The value of an expression."""

    expression: str
    result: int | float = Field(description="the value; integers stay exact")
    text: str = Field(description="the value formatted for display")


class ConversionResult(BaseModel):
    """A value converted between two units of the same quantity."""

    value: float
    from_unit: str = Field(description="symbol of the source unit")
    to_unit: str = Field(description="symbol of the target unit")
    result: float
    quantity: str = Field(description="what is measured, e.g. 'length'")
    text: str = Field(description="e.g. '100 °C = 212 °F'")


class UnitInfo(BaseModel):
    """One supported unit."""

    symbol: str
    name: str
    aliases: list[str]


class UnitCatalog(BaseModel):
    """Supported units grouped by quantity."""

    quantities: dict[str, list[UnitInfo]]


def build_server() -> MCPServer:
    """Build the calc server (it has no configuration)."""
    table = UnitTable()
    server = MCPServer(
        "calc",
        version="1.0.0",
        instructions=(
            "Use `evaluate` for any arithmetic instead of computing in your head, and "
            "`convert_units` for unit conversions (list_units shows the supported units)."
        ),
    )

    @server.tool(name="evaluate", description=_EVALUATE_DESCRIPTION, annotations=_PURE)
    def evaluate_expression(
        expression: Annotated[
            str,
            Field(
                max_length=MAX_EXPRESSION_LENGTH,
                description="Arithmetic expression, e.g. '(3 + 4) * 2 ** 10 / sqrt(2)'.",
            ),
        ],
    ) -> Evaluation:
        try:
            value = evaluate(expression)
        except CalcError as exc:
            raise ToolError(f"Cannot evaluate {expression!r}: {exc}") from None
        return Evaluation(expression=expression, result=value, text=format_number(value))

    @server.tool(annotations=_PURE)
    def convert_units(
        value: Annotated[float, Field(description="The amount to convert.")],
        from_unit: Annotated[str, Field(description="Source unit symbol or name, e.g. 'km', '°F', 'lb', 'GiB'.")],
        to_unit: Annotated[str, Field(description="Target unit of the same quantity, e.g. 'mi', '°C', 'kg', 'MB'.")],
    ) -> ConversionResult:
        """Convert a value between units of length, mass, volume, temperature, time, data size, speed,
        area, pressure, energy, power, angle or frequency.

        Symbols are case-sensitive where it matters (MB = megabyte, Mb = megabit; kB = 1000 bytes,
        KiB = 1024 bytes). Volumes like gal, qt, pt, cup, fl oz are US customary; use 'imp gal' etc.
        for imperial. Temperatures are absolute readings (100 °C -> 212 °F), not differences.
        """
        try:
            result, source, target = table.convert(value, from_unit, to_unit)
        except UnitError as exc:
            raise ToolError(str(exc)) from None
        return ConversionResult(
            value=value,
            from_unit=source.symbol,
            to_unit=target.symbol,
            result=result,
            quantity=source.quantity,
            text=f"{format_number(value)} {source.symbol} = {format_number(result)} {target.symbol}",
        )

    @server.tool(annotations=_PURE)
    def list_units(
        quantity: Annotated[
            str | None,
            Field(description="Only this quantity, e.g. 'length', 'data', 'temperature'. Omit for all."),
        ] = None,
    ) -> UnitCatalog:
        """List the units convert_units understands, grouped by quantity, with their accepted spellings."""
        grouped: dict[str, list[UnitInfo]] = {}
        for unit in table.units:
            grouped.setdefault(unit.quantity, []).append(
                UnitInfo(symbol=unit.symbol, name=unit.name, aliases=list(unit.aliases))
            )
        if quantity is not None:
            key = quantity.strip().lower()
            if key not in grouped:
                raise ToolError(f"Unknown quantity {quantity!r}; choose one of: {', '.join(grouped)}")
            grouped = {key: grouped[key]}
        return UnitCatalog(quantities=grouped)

    return server
