"""The `effdl` command line: a thin layer over the Python API.

Every module in this package that defines `register(subparsers)` adds one subcommand; that
function creates its parser and sets `func=run` (a callable taking the parsed args and returning an
exit code). User errors (EffdlError) and malformed arguments become one line on stderr and exit
code 2.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from effdl.errors import EffdlError


class _Parser(argparse.ArgumentParser):
    """argparse with argument errors on one line (the subcommand's usage is one `--help` away);
    subcommand parsers inherit the class."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="effdl", description="Train, compress and measure efficient CNNs.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):  # __main__ runs the CLI when imported
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except EffdlError as exc:
        print(f"effdl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # effdl.errors.Interrupted says what was saved and how to resume
        print(f"effdl: {exc or 'interrupted'}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
