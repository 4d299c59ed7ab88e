"""Print a greeting for every name given on the command line."""

import sys


def greet(name: str) -> str:
    """Return a friendly greeting."""
    return f"Hello, {name}!"


def main(argv: list[str]) -> int:
    for name in argv or ["world"]:
        print(greet(name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
