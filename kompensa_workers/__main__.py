"""``kompensa-workers`` / ``python -m kompensa_workers``: command-line entry point.

The full CLI (``list``, ``show``, ``cancel``, ``retry-compensation``, ``recover``,
``purge``) needs the ``cli`` extra (click, rich); ``demo`` runs without it.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        from .ops.cli import run
    except ImportError as exc:
        if args[:1] == ["demo"]:
            from .ops.demo import main as demo

            return demo(args[1:])
        print(f"kompensa-workers: {exc} (only `demo` works without it)", file=sys.stderr)
        return 1
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
