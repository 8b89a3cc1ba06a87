"""The `effdl` command line: a thin layer over the Python API.

Every module in this package that defines `register(subparsers)` adds one subcommand; that
function creates its parser and sets `func=run` (a callable taking the parsed args and returning an
exit code). User errors (EffdlError) and malformed arguments become one line on stderr and exit
code 2.

First contact is fast: `effdl --help`, `effdl CMD --help` and a bad argument answer in well under
two seconds, because the modules here import torch, onnx & co. only inside the functions that use
them, and `main` registers only the command it runs (the others appear in `effdl --help` with the
first sentence of their module docstring). Every parser matches option names exactly (no
abbreviations: `--epoch 2` is an error, not `--epochs 2`).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import pkgutil
import re
import sys
import warnings
from collections.abc import Iterator
from types import ModuleType

from effdl import __version__
from effdl.console import is_main_process
from effdl.errors import EffdlError


class _Parser(argparse.ArgumentParser):
    """argparse with exact option names and argument errors on one line (the subcommand's usage is
    one `--help` away); subcommand parsers inherit the class."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)  # a prefix like --epoch must not silently mean --epochs
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")

    def parse_args(self, args=None, namespace=None):
        # argparse reports flags no parser knew from the root parser: name the subcommand's help.
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            command = getattr(parsed, "command", None)
            prog = f"{self.prog} {command}" if command else self.prog
            self.exit(2, f"{prog}: error: unrecognized arguments: {' '.join(extras)} (see '{prog} --help')\n")
        return parsed


def command_modules() -> dict[str, ModuleType]:
    """The subcommand modules by command name (each module's import is light: no torch)."""
    modules = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):  # __main__ runs the CLI when imported
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "register"):
            modules[info.name] = module
    return modules


def command_summary(module: ModuleType) -> str:
    """The first sentence of a command module's docstring, without its "`effdl CMD ...`:" prefix."""
    paragraph = (module.__doc__ or "").strip().split("\n\n")[0]
    text = " ".join(re.sub(r"^`[^`]*`:\s*", "", paragraph).split())
    return re.split(r"(?<=\.)\s", text)[0].rstrip(".")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `effdl` parser: every subcommand in full, or only `command` in full (the others by name
    and summary, enough for `effdl --help` and for 'invalid choice')."""
    parser = _Parser(prog="effdl", description="Train, compress and measure efficient CNNs.")
    parser.add_argument("--version", action="version", version=f"effdl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    modules = command_modules()
    lazy = command is not None
    for name, module in modules.items():
        if not lazy or name == command:
            module.register(sub)
        else:
            sub.add_parser(name, help=command_summary(module), add_help=False)
    return parser


def _command_in(argv: list[str]) -> str:
    """The subcommand named in `argv` ('' when none): the root options take no values, so it is the
    first word that is not an option."""
    return next((word for word in argv if not word.startswith("-")), "")


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep  # .../effdl/


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as the CLI's one-line messages: effdl's own as 'effdl: warning: ...', a library's
    with where it came from (Python's default adds a second line of source code)."""
    text = " ".join(str(message).split())
    ours = os.path.abspath(filename).startswith(_PACKAGE_DIR)
    origin = "" if ours else f" ({category.__name__} from {filename}:{lineno})"
    print(f"effdl: warning: {text}{origin}", file=file or sys.stderr)


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # run as the program (not called in-process, where the caller handles warnings)
        warnings.showwarning = _one_line_warning
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(command=_command_in(argv))
    try:
        # inside the try: argument types (e.g. a checkpoint that must exist) may raise EffdlError
        args = parser.parse_args(argv)
        _check_data_parallel(args.command)
        with _quiet_unless_rank_zero():
            return int(args.func(args) or 0)
    except EffdlError as exc:
        if _reports_errors():
            print(f"effdl: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the file system's refusal (permissions, a full disk...): its reason, in one line
        if _reports_errors():
            target = exc.filename2 or exc.filename  # a rename's destination, not its temporary source
            where = f": {target}" if target else ""
            print(f"effdl: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # effdl.errors.Interrupted says what was saved and how to resume
        if _reports_errors():
            print(f"effdl: {str(exc) or 'interrupted'}", file=sys.stderr)
        return 130


# The commands that train, and so run as one data-parallel job under torchrun; the others measure
# or orchestrate their own workers, and N copies of them would only write the same files N times.
DATA_PARALLEL_COMMANDS = ("train", "distill", "prune", "quantize", "factorize", "run")


def _check_data_parallel(command: str) -> None:
    """Refuse, in one line, a command torchrun started several copies of that is not data-parallel."""
    world = os.environ.get("WORLD_SIZE", "")
    if world.isdigit() and int(world) > 1 and command not in DATA_PARALLEL_COMMANDS:
        raise EffdlError(f"`effdl {command}` runs in one process: start it without torchrun (torchrun runs "
                         f"{', '.join(DATA_PARALLEL_COMMANDS)})")


@contextlib.contextmanager
def _quiet_unless_rank_zero() -> Iterator[None]:
    """Under torchrun, the processes other than rank 0 print nothing (rank 0 speaks for the job: its
    progress, its result on stdout); a process's own error still reaches the terminal (written to
    sys.__stderr__, effdl.train.run), and so does a crash's traceback, printed after this block."""
    if _reports_errors():
        yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield


def _reports_errors() -> bool:
    """Under torchrun every process meets the same errors: rank 0 alone reports them (a process's
    own error is printed with its rank where it happens, effdl.train.run)."""
    return is_main_process()


if __name__ == "__main__":
    sys.exit(main())
