"""Safe arithmetic: parse with `ast`, walk a whitelist, never `eval`.

Only numbers, + - * / // % **, unary signs, parentheses, the functions in
`FUNCTIONS` and the constants in `CONSTANTS` are accepted. Limits keep one
call cheap: input length, node count, integer size (checked before an
integer power is computed, and after every operation) and finite floats.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Mapping
from decimal import ROUND_HALF_UP, Decimal, localcontext
from types import MappingProxyType

Number = int | float

MAX_EXPRESSION_LENGTH = 1000
MAX_NODES = 400
MAX_INT_BITS = 3400  # about 1000 decimal digits


class CalcError(ValueError):
    """The expression is not allowed or cannot be evaluated; the message says why."""


def _round(x: Number, ndigits: Number = 0) -> Number:
    """Round half away from zero (2.5 -> 3, 2.675 -> 2.68), unlike Python's bankers' rounding."""
    if isinstance(ndigits, float) and ndigits.is_integer():
        ndigits = int(ndigits)
    if not isinstance(ndigits, int) or not -20 <= ndigits <= 20:
        raise CalcError("round(x, n): n must be a whole number between -20 and 20")
    with localcontext() as context:
        context.prec = 1100  # enough for any integer the limits allow
        rounded = Decimal(repr(x)).quantize(Decimal(1).scaleb(-ndigits), rounding=ROUND_HALF_UP)
    if ndigits == 0 or (ndigits < 0 and isinstance(x, int)):
        return int(rounded)
    return float(rounded)


def _factorial(n: Number) -> int:
    if isinstance(n, float) and n.is_integer():
        n = int(n)
    if not isinstance(n, int) or n < 0:
        raise CalcError("factorial(n) needs a whole number n >= 0")
    if n > 450:
        raise CalcError("factorial(n) is limited to n <= 450 (about 1000 digits)")
    return math.factorial(n)


def _log(x: Number, base: Number = math.e) -> float:
    return math.log(x, base)


FUNCTIONS: Mapping[str, Callable[..., Number]] = MappingProxyType(
    {
        "abs": abs,
        "round": _round,
        "min": min,
        "max": max,
        "sqrt": math.sqrt,
        "cbrt": math.cbrt,
        "exp": math.exp,
        "ln": math.log,
        "log": _log,
        "log10": math.log10,
        "log2": math.log2,
        "sin": math.sin,
        "cos": math.cos,
        "tan": math.tan,
        "asin": math.asin,
        "acos": math.acos,
        "atan": math.atan,
        "atan2": math.atan2,
        "sinh": math.sinh,
        "cosh": math.cosh,
        "tanh": math.tanh,
        "degrees": math.degrees,
        "radians": math.radians,
        "hypot": math.hypot,
        "floor": math.floor,
        "ceil": math.ceil,
        "trunc": math.trunc,
        "factorial": _factorial,
        "gcd": math.gcd,
        "lcm": math.lcm,
    }
)

CONSTANTS: Mapping[str, float] = MappingProxyType({"pi": math.pi, "e": math.e, "tau": math.tau})

_BINARY: dict[type[ast.operator], Callable[[Number, Number], Number]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Number], Number]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_OPERATOR_HINTS: dict[type[ast.AST], str] = {
    ast.BitXor: "'^' is not a power operator here; use '**' (2**10)",
    ast.BitAnd: "bitwise '&' is not supported",
    ast.BitOr: "bitwise '|' is not supported",
    ast.LShift: "shift '<<' is not supported",
    ast.RShift: "shift '>>' is not supported",
    ast.MatMult: "'@' is not supported",
}


def evaluate(expression: str) -> Number:
    """Evaluate an arithmetic expression and return an int or a finite float.

    Raises:
        CalcError: for anything outside the whitelist, math errors, or results beyond the limits.
    """
    text = expression.strip()
    if not text:
        raise CalcError("the expression is empty")
    if len(text) > MAX_EXPRESSION_LENGTH:
        raise CalcError(f"the expression is longer than {MAX_EXPRESSION_LENGTH} characters")
    try:
        tree = ast.parse(text.replace("×", "*").replace("÷", "/").replace("−", "-"), mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as exc:
        raise CalcError(f"not a valid expression: {getattr(exc, 'msg', exc)}") from None
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise CalcError(f"the expression has more than {MAX_NODES} parts")
    try:
        result = _eval(tree.body)
    except CalcError:
        raise
    except ZeroDivisionError:
        raise CalcError("division by zero") from None
    except OverflowError:
        raise CalcError("the result is too large") from None
    except (ValueError, TypeError) as exc:
        raise CalcError(f"math error: {exc}") from None
    except RecursionError:
        raise CalcError("the expression is nested too deeply") from None
    return result


def _eval(node: ast.AST) -> Number:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise CalcError(f"only real numbers are allowed, not {node.value!r}")
        return _checked(node.value)
    if isinstance(node, ast.BinOp):
        op = _BINARY.get(type(node.op))
        if op is None:
            raise CalcError(_OPERATOR_HINTS.get(type(node.op), f"operator {type(node.op).__name__} is not supported"))
        left, right = _eval(node.left), _eval(node.right)
        if op is operator.pow:
            _guard_power(left, right)
        return _checked(op(left, right))
    if isinstance(node, ast.UnaryOp):
        unary = _UNARY.get(type(node.op))
        if unary is None:
            raise CalcError(f"operator {type(node.op).__name__} is not supported")
        return _checked(unary(_eval(node.operand)))
    if isinstance(node, ast.Name):
        if node.id in CONSTANTS:
            return CONSTANTS[node.id]
        raise CalcError(f"unknown name {node.id!r}; constants are {', '.join(CONSTANTS)}")
    if isinstance(node, ast.Call):
        return _call(node)
    raise CalcError(f"{type(node).__name__} is not allowed in an arithmetic expression")


def _call(node: ast.Call) -> Number:
    name = node.func.id if isinstance(node.func, ast.Name) else None
    function = FUNCTIONS.get(name or "")
    if function is None:
        raise CalcError(f"unknown function {name or ast.unparse(node.func)!r}; available: {', '.join(FUNCTIONS)}")
    if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
        raise CalcError(f"{name}() takes plain positional arguments only")
    if not node.args and name not in ("gcd", "lcm"):
        raise CalcError(f"{name}() needs at least one argument")
    args = [_eval(a) for a in node.args]
    if name in ("gcd", "lcm", "factorial"):
        args = [int(a) if isinstance(a, float) and a.is_integer() else a for a in args]
    return _checked(function(*args))


def _guard_power(base: Number, exponent: Number) -> None:
    """Refuse integer powers whose result would exceed the size limit, before computing them."""
    # bit_length() - 1 under-estimates log2(base), so this never refuses a result within
    # the limit; anything it lets through is at most about twice the limit and cheap.
    if not (isinstance(base, int) and isinstance(exponent, int)) or exponent <= 0:
        return
    if exponent * (abs(base).bit_length() - 1) > MAX_INT_BITS:
        raise CalcError("the result is too large (more than about 1000 digits)")


def _checked(value: object) -> Number:
    if isinstance(value, bool) or not isinstance(value, int | float):
        if isinstance(value, complex):
            raise CalcError("the result is a complex number; only real results are supported")
        raise CalcError(f"unsupported result type {type(value).__name__}")
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise CalcError("the result is too large (more than about 1000 digits)")
    if isinstance(value, float) and not math.isfinite(value):
        raise CalcError("the result is not a finite number")
    return value


def format_number(value: Number) -> str:
    """Human form: integers as is, floats without a trailing '.0' when whole."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return repr(value)
