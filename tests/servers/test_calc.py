"""The `calc` server: whitelisted arithmetic and unit conversion."""

from __future__ import annotations

import math

import pytest
from mcp import Client

from mcp_hub_servers.calc.expression import CalcError, evaluate
from mcp_hub_servers.calc.server import build_server
from tests.servers.conftest import StdioCall, data, error_text, hints


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("7 / 2", 3.5),
        ("7 // 2", 3),
        ("-7 % 3", 2),
        ("2 ** 10", 1024),
        ("2 ** -1", 0.5),
        ("-3 ** 2", -9),
        ("2 ** 100", 1267650600228229401496703205376),
        ("sqrt(16) + abs(-2)", 6.0),
        ("round(2.5)", 3),
        ("round(-2.5)", -3),
        ("round(2.675, 2)", 2.68),
        ("round(1234, -2)", 1200),
        ("log(8, 2)", 3.0),
        ("ln(e)", 1.0),
        ("log10(1000)", 3.0),
        ("max(1, 5, 3) - min(4, 2)", 3),
        ("factorial(10)", 3628800),
        ("gcd(12, 18) * lcm(4, 6)", 72),
        ("1_000 * 1.5e3", 1500000.0),
        ("3 × 4 ÷ 2", 6.0),
    ],
)
def test_evaluate_values(expression: str, expected: float) -> None:
    value = evaluate(expression)
    assert value == pytest.approx(expected)
    assert type(value) is type(expected)


def test_evaluate_trigonometry_uses_radians() -> None:
    assert evaluate("sin(pi / 2)") == pytest.approx(1.0)
    assert evaluate("degrees(atan2(1, 1))") == pytest.approx(45.0)
    assert evaluate("cos(tau)") == pytest.approx(math.cos(math.tau))


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("__import__('os').system('true')", "unknown function"),
        ("(1).real", "Attribute is not allowed"),
        ("x + 1", "unknown name 'x'"),
        ("[1, 2]", "List is not allowed"),
        ("'a' * 3", "only real numbers"),
        ("True + 1", "only real numbers"),
        ("1j * 2", "only real numbers"),
        ("lambda: 1", "Lambda is not allowed"),
        ("1 if 2 else 3", "IfExp is not allowed"),
        ("1 < 2", "Compare is not allowed"),
        ("2 ^ 3", "use '**'"),
        ("1 << 100000", "not supported"),
        ("sqrt(x=4)", "positional"),
        ("1 / 0", "division by zero"),
        ("sqrt(-1)", "math error"),
        ("(-8) ** (1 / 3)", "complex"),
        ("9 ** 9 ** 9", "too large"),
        ("2 ** 100000", "too large"),
        ("10.0 ** 400", "too large"),
        ("1e308 * 10", "not a finite number"),
        ("factorial(100000)", "limited"),
        ("exp(1000)", "too large"),
        ("1 +", "not a valid expression"),
        ("", "empty"),
        ("1+" * 600 + "1", "longer than"),
        ("-" * 500 + "1", "more than"),
    ],
)
def test_evaluate_refuses(expression: str, reason: str) -> None:
    with pytest.raises(CalcError) as caught:
        evaluate(expression)
    assert reason in str(caught.value)


async def test_tools_listed_with_hints() -> None:
    async with Client(build_server()) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == {"evaluate", "convert_units", "list_units"}
    for tool in tools.values():
        assert hints(tool).read_only_hint is True and hints(tool).idempotent_hint is True
        assert tool.output_schema is not None
    assert "sqrt" in (tools["evaluate"].description or "")
    assert tools["convert_units"].input_schema["properties"]["from_unit"]["description"]


async def test_evaluate_tool_and_its_errors() -> None:
    async with Client(build_server()) as client:
        ok = data(await client.call_tool("evaluate", {"expression": "2 ** 64 / 2 ** 60"}))
        exact = data(await client.call_tool("evaluate", {"expression": "3 ** 40"}))
        bad = await client.call_tool("evaluate", {"expression": "open('/etc/passwd')"})
        too_long = await client.call_tool("evaluate", {"expression": "1" * 5000})
    assert ok == {"expression": "2 ** 64 / 2 ** 60", "result": 16.0, "text": "16"}
    assert exact["result"] == 3**40 and exact["text"] == str(3**40)
    assert "unknown function 'open'" in error_text(bad)
    assert "1000 characters" in error_text(too_long)


@pytest.mark.parametrize(
    ("value", "source", "target", "expected"),
    [
        (100, "°C", "°F", 212),
        (32, "F", "C", 0),
        (-40, "celsius", "fahrenheit", -40),
        (0, "K", "°C", -273.15),
        (98.6, "degF", "degC", 37),
        (491.67, "R", "F", 32),
        (1, "mi", "km", 1.609344),
        (1, "in", "cm", 2.54),
        (3, "feet", "inches", 36),
        (1, "nmi", "m", 1852),
        (1, "lb", "kg", 0.45359237),
        (1, "st", "lb", 14),
        (1, "oz", "g", 28.349523125),
        (1, "gal", "L", 3.785411784),
        (1, "imp gal", "L", 4.54609),
        (1, "cup", "mL", 236.5882365),
        (1, "tbsp", "tsp", 3),
        (1, "m3", "L", 1000),
        (1, "GiB", "MiB", 1024),
        (1, "GB", "MB", 1000),
        (8, "Mbit", "MB", 1),
        (1, "KiB", "B", 1024),
        (100, "km/h", "m/s", 27.777777777777778),
        (60, "mph", "km/h", 96.56064),
        (1, "kn", "km/h", 1.852),
        (1, "acre", "m²", 4046.8564224),
        (1, "sq mi", "acre", 640),
        (1, "ha", "m2", 10000),
        (1, "atm", "Pa", 101325),
        (1, "psi", "kPa", 6.894757293168361),
        (1, "bar", "hPa", 1000),
        (1, "kWh", "MJ", 3.6),
        (1, "kcal", "kJ", 4.184),
        (1, "hp", "W", 745.6998715822702),
        (180, "deg", "rad", math.pi),
        (1, "turn", "°", 360),
        (1, "h", "s", 3600),
        (1, "week", "days", 7),
        (1, "year", "d", 365.2425),
        (90, "min", "h", 1.5),
        (1, "μm", "nm", 1000),
        (1, "kHz", "Hz", 1000),
        (60, "rpm", "Hz", 1),
    ],
)
def test_known_conversions(value: float, source: str, target: str, expected: float) -> None:
    from mcp_hub_servers.calc.units import UnitTable

    result, _, _ = UnitTable().convert(value, source, target)
    assert result == pytest.approx(expected, rel=1e-12, abs=1e-12)


async def test_convert_units_tool() -> None:
    async with Client(build_server()) as client:
        boiling = data(await client.call_tool("convert_units", {"value": 100, "from_unit": "C", "to_unit": "F"}))
        ambiguous = await client.call_tool("convert_units", {"value": 1, "from_unit": "mb", "to_unit": "kB"})
        mismatch = await client.call_tool("convert_units", {"value": 1, "from_unit": "km", "to_unit": "kg"})
        unknown = await client.call_tool("convert_units", {"value": 1, "from_unit": "furlong", "to_unit": "m"})
        too_cold = await client.call_tool("convert_units", {"value": -300, "from_unit": "°C", "to_unit": "K"})
    assert boiling == {
        "value": 100.0,
        "from_unit": "°C",
        "to_unit": "°F",
        "result": 212.0,
        "quantity": "temperature",
        "text": "100 °C = 212 °F",
    }
    assert "ambiguous" in error_text(ambiguous) and "MB (megabyte)" in error_text(ambiguous)
    assert "cannot convert length (km) to mass (kg)" in error_text(mismatch)
    assert "unknown unit 'furlong'" in error_text(unknown)
    assert "below absolute zero" in error_text(too_cold)


def test_symbols_are_case_sensitive_where_it_matters() -> None:
    from mcp_hub_servers.calc.units import UnitTable

    table = UnitTable()
    assert table.lookup("MB").name == "megabyte"
    assert table.lookup("Mb").name == "megabit"
    assert table.lookup("KB").name == "kilobyte"
    assert table.lookup("KILOMETRES").symbol == "km"  # unambiguous spellings ignore case


async def test_list_units() -> None:
    async with Client(build_server()) as client:
        everything = data(await client.call_tool("list_units", {}))
        data_units = data(await client.call_tool("list_units", {"quantity": "Data"}))
        bogus = await client.call_tool("list_units", {"quantity": "vibes"})
    assert {"length", "mass", "volume", "temperature", "time", "data", "speed"} <= set(everything["quantities"])
    assert list(data_units["quantities"]) == ["data"]
    assert "GiB" in {u["symbol"] for u in data_units["quantities"]["data"]}
    assert "choose one of" in error_text(bogus)


async def test_served_over_stdio(call_over_stdio: StdioCall) -> None:
    result, tools = await call_over_stdio("calc", "evaluate", {"expression": "(2 + 3) * 2 ** 10"})
    assert set(tools) == {"evaluate", "convert_units", "list_units"}
    assert data(result)["result"] == 5120
