"""Unit table and conversion for the calc server.

Every unit maps to its quantity's base unit by ``base = (value + offset) * factor``
(the offset is only non-zero for temperatures). Factors are exact fractions where
a definition exists (inch = 0.0254 m, pound = 0.45359237 kg, US gallon = 231 in³)
and arithmetic is done on fractions, so 100 °C comes out as exactly 212 °F.
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass
from fractions import Fraction


@dataclass(frozen=True)
class Unit:
    """One unit of measure."""

    symbol: str
    name: str
    quantity: str
    factor: Fraction
    offset: Fraction = Fraction(0)
    aliases: tuple[str, ...] = ()

    def to_base(self, value: Fraction) -> Fraction:
        """Express `value` of this unit in the quantity's base unit."""
        return (value + self.offset) * self.factor

    def from_base(self, value: Fraction) -> Fraction:
        """Express a base-unit `value` in this unit."""
        return value / self.factor - self.offset


class UnitError(ValueError):
    """Unknown, ambiguous or incompatible units; the message suggests a fix."""


def _u(quantity: str, symbol: str, name: str, factor: float | Fraction, *aliases: str, offset: float = 0.0) -> Unit:
    # A float literal is read as the decimal it is written as (0.0254 -> 127/5000).
    exact = factor if isinstance(factor, Fraction) else Fraction(repr(factor))
    return Unit(symbol, name, quantity, exact, Fraction(repr(offset)), aliases)


F = Fraction
_INCH = F("0.0254")
_FOOT = F("0.3048")
_POUND = F("0.45359237")
_G0 = F("9.80665")  # standard gravity, m/s²
_US_GALLON = 231 * _INCH**3
_IMP_GALLON = F("4.54609e-3")

UNITS: tuple[Unit, ...] = (
    # length, base metre
    _u("length", "m", "metre", 1.0, "meter", "metres", "meters"),
    _u("length", "km", "kilometre", 1e3, "kilometer", "kilometres", "kilometers"),
    _u("length", "cm", "centimetre", 1e-2, "centimeter", "centimetres", "centimeters"),
    _u("length", "mm", "millimetre", 1e-3, "millimeter", "millimetres", "millimeters"),
    _u("length", "µm", "micrometre", 1e-6, "um", "micrometer", "micron", "microns"),
    _u("length", "nm", "nanometre", 1e-9, "nanometer"),
    _u("length", "in", "inch", 0.0254, "inches", '"'),
    _u("length", "ft", "foot", 0.3048, "feet", "'"),
    _u("length", "yd", "yard", 0.9144, "yards"),
    _u("length", "mi", "mile", 1609.344, "miles"),
    _u("length", "nmi", "nautical mile", 1852.0, "nautical miles", "NM"),
    _u("length", "au", "astronomical unit", 149_597_870_700.0, "AU"),
    _u("length", "ly", "light-year", 9_460_730_472_580_800.0, "light year", "light years", "light-years"),
    # mass, base kilogram
    _u("mass", "kg", "kilogram", 1.0, "kilograms", "kilo", "kilos"),
    _u("mass", "g", "gram", 1e-3, "grams", "gramme"),
    _u("mass", "mg", "milligram", 1e-6, "milligrams"),
    _u("mass", "µg", "microgram", 1e-9, "ug", "mcg", "micrograms"),
    _u("mass", "t", "tonne", 1e3, "tonnes", "metric ton", "metric tons"),
    _u("mass", "lb", "pound", 0.45359237, "lbs", "pounds"),
    _u("mass", "oz", "ounce", 0.028349523125, "ounces"),
    _u("mass", "st", "stone", 6.35029318, "stones"),
    _u("mass", "ton", "short ton", 907.18474, "short tons", "US ton", "tons"),
    _u("mass", "long ton", "long ton", 1016.0469088, "long tons", "imperial ton"),
    _u("mass", "ct", "carat", 2e-4, "carats"),
    # volume, base cubic metre
    _u("volume", "m³", "cubic metre", 1.0, "m3", "cubic meter", "cubic metres", "cubic meters"),
    _u("volume", "L", "litre", 1e-3, "l", "liter", "litres", "liters"),
    _u("volume", "dL", "decilitre", 1e-4, "dl", "deciliter"),
    _u("volume", "cL", "centilitre", 1e-5, "cl", "centiliter"),
    _u("volume", "mL", "millilitre", 1e-6, "ml", "milliliter", "millilitres", "milliliters"),
    _u("volume", "cm³", "cubic centimetre", 1e-6, "cm3", "cc", "cubic centimeter"),
    _u("volume", "in³", "cubic inch", _INCH**3, "in3", "cubic inches"),
    _u("volume", "ft³", "cubic foot", _FOOT**3, "ft3", "cubic feet"),
    _u("volume", "gal", "US gallon", _US_GALLON, "gallon", "gallons", "US gal", "US gallons"),
    _u("volume", "qt", "US quart", _US_GALLON / 4, "quart", "quarts", "US quarts"),
    _u("volume", "pt", "US pint", _US_GALLON / 8, "pint", "pints", "US pints"),
    _u("volume", "cup", "US cup", _US_GALLON / 16, "cups", "US cups"),
    _u("volume", "fl oz", "US fluid ounce", _US_GALLON / 128, "floz", "fluid ounce", "fluid ounces", "US fl oz"),
    _u("volume", "tbsp", "US tablespoon", _US_GALLON / 256, "tablespoon", "tablespoons"),
    _u("volume", "tsp", "US teaspoon", _US_GALLON / 768, "teaspoon", "teaspoons"),
    _u("volume", "imp gal", "imperial gallon", _IMP_GALLON, "imperial gallons", "UK gallon", "UK gallons"),
    _u("volume", "imp pt", "imperial pint", _IMP_GALLON / 8, "imperial pints", "UK pint", "UK pints"),
    _u("volume", "imp fl oz", "imperial fluid ounce", _IMP_GALLON / 160, "UK fl oz", "imperial fluid ounces"),
    _u("volume", "bbl", "oil barrel", 42 * _US_GALLON, "barrel", "barrels"),
    # temperature, base kelvin (absolute temperatures, not differences)
    _u("temperature", "K", "kelvin", 1.0, "kelvins"),
    _u("temperature", "°C", "degree Celsius", 1.0, "C", "degC", "celsius", "centigrade", offset=273.15),
    _u("temperature", "°F", "degree Fahrenheit", F(5, 9), "F", "degF", "fahrenheit", offset=459.67),
    _u("temperature", "°R", "degree Rankine", F(5, 9), "R", "degR", "rankine"),
    # time, base second; month and year are Gregorian averages (365.2425 days a year)
    _u("time", "s", "second", 1.0, "sec", "secs", "seconds"),
    _u("time", "ms", "millisecond", 1e-3, "milliseconds"),
    _u("time", "µs", "microsecond", 1e-6, "us", "microseconds"),
    _u("time", "ns", "nanosecond", 1e-9, "nanoseconds"),
    _u("time", "min", "minute", 60.0, "mins", "minutes"),
    _u("time", "h", "hour", 3600.0, "hr", "hrs", "hours"),
    _u("time", "d", "day", 86400.0, "days"),
    _u("time", "wk", "week", 604800.0, "weeks"),
    _u("time", "mo", "month", 2_629_746.0, "months"),
    _u("time", "yr", "year", 31_556_952.0, "y", "years"),
    # data size, base byte; kB/MB/... are decimal, KiB/MiB/... binary
    _u("data", "bit", "bit", 0.125, "bits", "b"),
    _u("data", "B", "byte", 1.0, "bytes"),
    _u("data", "kB", "kilobyte", 1e3, "KB", "kilobytes"),
    _u("data", "MB", "megabyte", 1e6, "megabytes"),
    _u("data", "GB", "gigabyte", 1e9, "gigabytes"),
    _u("data", "TB", "terabyte", 1e12, "terabytes"),
    _u("data", "PB", "petabyte", 1e15, "petabytes"),
    _u("data", "KiB", "kibibyte", 1024.0, "kibibytes"),
    _u("data", "MiB", "mebibyte", 1024.0**2, "mebibytes"),
    _u("data", "GiB", "gibibyte", 1024.0**3, "gibibytes"),
    _u("data", "TiB", "tebibyte", 1024.0**4, "tebibytes"),
    _u("data", "PiB", "pebibyte", 1024.0**5, "pebibytes"),
    _u("data", "kbit", "kilobit", 125.0, "kb", "kilobits"),
    _u("data", "Mbit", "megabit", 125_000, "Mb", "megabits"),
    _u("data", "Gbit", "gigabit", 125e6, "Gb", "gigabits"),
    _u("data", "Tbit", "terabit", 125e9, "Tb", "terabits"),
    # speed, base metre per second
    _u("speed", "m/s", "metre per second", 1.0, "mps", "meters per second", "metres per second"),
    _u("speed", "km/h", "kilometre per hour", F(1000, 3600), "kph", "kmh", "kmph", "kilometers per hour"),
    _u("speed", "mph", "mile per hour", 0.44704, "mi/h", "miles per hour"),
    _u("speed", "kn", "knot", F(1852, 3600), "kt", "knots"),
    _u("speed", "ft/s", "foot per second", 0.3048, "fps", "feet per second"),
    # area, base square metre
    _u("area", "m²", "square metre", 1.0, "m2", "sq m", "square meter", "square meters"),
    _u("area", "km²", "square kilometre", 1e6, "km2", "sq km", "square kilometer", "square kilometers"),
    _u("area", "cm²", "square centimetre", 1e-4, "cm2", "square centimeter"),
    _u("area", "mm²", "square millimetre", 1e-6, "mm2", "square millimeter"),
    _u("area", "ha", "hectare", 1e4, "hectares"),
    _u("area", "ac", "acre", 4046.8564224, "acres"),
    _u("area", "ft²", "square foot", _FOOT**2, "ft2", "sq ft", "square feet"),
    _u("area", "in²", "square inch", _INCH**2, "in2", "sq in", "square inches"),
    _u("area", "yd²", "square yard", (3 * _FOOT) ** 2, "yd2", "sq yd", "square yards"),
    _u("area", "mi²", "square mile", (5280 * _FOOT) ** 2, "mi2", "sq mi", "square miles"),
    # pressure, base pascal
    _u("pressure", "Pa", "pascal", 1.0, "pascals"),
    _u("pressure", "hPa", "hectopascal", 100.0, "hectopascals"),
    _u("pressure", "kPa", "kilopascal", 1e3, "kilopascals"),
    _u("pressure", "MPa", "megapascal", 1e6, "megapascals"),
    _u("pressure", "bar", "bar", 1e5, "bars"),
    _u("pressure", "mbar", "millibar", 100.0, "millibars"),
    _u("pressure", "atm", "standard atmosphere", 101_325.0, "atmosphere", "atmospheres"),
    _u("pressure", "psi", "pound per square inch", _POUND * _G0 / _INCH**2, "lbf/in2"),
    _u("pressure", "mmHg", "millimetre of mercury", 133.322387415, "millimeters of mercury"),
    _u("pressure", "Torr", "torr", F(101_325, 760), "torr"),
    # energy, base joule
    _u("energy", "J", "joule", 1.0, "joules"),
    _u("energy", "kJ", "kilojoule", 1e3, "kilojoules"),
    _u("energy", "MJ", "megajoule", 1e6, "megajoules"),
    _u("energy", "cal", "calorie", 4.184, "calories"),
    _u("energy", "kcal", "kilocalorie", 4184.0, "Cal", "kilocalories", "food calorie"),
    _u("energy", "Wh", "watt-hour", 3600.0, "watt hour", "watt hours"),
    _u("energy", "kWh", "kilowatt-hour", 3.6e6, "kilowatt hour", "kilowatt hours"),
    _u("energy", "eV", "electronvolt", 1.602176634e-19, "electron volt", "electronvolts"),
    _u("energy", "BTU", "British thermal unit", 1055.05585262, "Btu", "btu"),
    # power, base watt
    _u("power", "W", "watt", 1.0, "watts"),
    _u("power", "kW", "kilowatt", 1e3, "kilowatts"),
    _u("power", "MW", "megawatt", 1e6, "megawatts"),
    _u("power", "hp", "horsepower", 550 * _FOOT * _POUND * _G0, "mechanical horsepower"),
    _u("power", "PS", "metric horsepower", 75 * _G0, "metric hp"),
    # angle, base radian
    _u("angle", "rad", "radian", 1.0, "radians"),
    _u("angle", "°", "degree", F(math.pi) / 180, "deg", "degrees"),
    _u("angle", "grad", "gradian", F(math.pi) / 200, "gon", "gradians"),
    _u("angle", "turn", "turn", F(math.tau), "rev", "revolution", "revolutions", "turns"),
    _u("angle", "arcmin", "arcminute", F(math.pi) / 10_800, "arcminutes"),
    _u("angle", "arcsec", "arcsecond", F(math.pi) / 648_000, "arcseconds"),
    # frequency, base hertz
    _u("frequency", "Hz", "hertz", 1.0, "hz"),
    _u("frequency", "kHz", "kilohertz", 1e3, "khz"),
    _u("frequency", "MHz", "megahertz", 1e6, "mhz"),
    _u("frequency", "GHz", "gigahertz", 1e9, "ghz"),
    _u("frequency", "rpm", "revolution per minute", F(1, 60), "RPM", "revolutions per minute"),
)


def _key(text: str) -> str:
    """Normalise a spelling: NFKC (µ/μ, ² -> 2), trimmed, single spaces, no '^'."""
    return " ".join(unicodedata.normalize("NFKC", text).replace("^", "").split())


class UnitTable:
    """Looks units up by symbol, name or alias.

    Exact spellings win (so 'MB' is a megabyte and 'Mb' a megabit); otherwise a
    case-insensitive match is used when it is unambiguous.
    """

    def __init__(self, units: tuple[Unit, ...] = UNITS) -> None:
        self.units = units
        self._exact: dict[str, Unit] = {}
        self._folded: dict[str, list[Unit]] = {}
        for unit in units:
            for spelling in (unit.symbol, unit.name, *unit.aliases):
                key = _key(spelling)
                if self._exact.setdefault(key, unit) is not unit:
                    raise ValueError(f"unit spelling {spelling!r} is defined twice")
                folded = self._folded.setdefault(key.casefold(), [])
                if unit not in folded:
                    folded.append(unit)

    def lookup(self, spelling: str) -> Unit:
        """Find a unit or raise `UnitError` naming the candidates."""
        key = _key(spelling)
        if key in self._exact:
            return self._exact[key]
        candidates = self._folded.get(key.casefold(), [])
        if len(candidates) == 1:
            return candidates[0]
        if candidates:
            options = ", ".join(f"{u.symbol} ({u.name})" for u in candidates)
            raise UnitError(f"{spelling!r} is ambiguous: write one of {options}")
        hint = self._close(key)
        raise UnitError(f"unknown unit {spelling!r}.{hint} The list_units tool shows every supported unit.")

    def convert(self, value: float, source: str, target: str) -> tuple[float, Unit, Unit]:
        """Convert `value` from `source` to `target` units (correctly rounded to a float)."""
        a, b = self.lookup(source), self.lookup(target)
        if a.quantity != b.quantity:
            raise UnitError(f"cannot convert {a.quantity} ({a.symbol}) to {b.quantity} ({b.symbol})")
        if not math.isfinite(value):
            raise UnitError("the value must be a finite number")
        # repr() gives the decimal the caller wrote (491.67, not its binary neighbour).
        base = a.to_base(Fraction(repr(float(value))))
        if a.quantity == "temperature" and base < 0:
            raise UnitError(f"{value:g} {a.symbol} is below absolute zero")
        try:
            return float(b.from_base(base)), a, b
        except OverflowError:
            raise UnitError("the result is too large to represent") from None

    def _close(self, key: str) -> str:
        import difflib  # only on the error path

        matches = difflib.get_close_matches(key.casefold(), list(self._folded), n=3, cutoff=0.7)
        units = [u for m in matches for u in self._folded[m]]
        return f" Did you mean {', '.join(dict.fromkeys(u.symbol for u in units))}?" if units else ""
