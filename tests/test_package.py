"""`import effdl` stays light, and its submodules are reachable as attributes, as the README uses them."""

import subprocess
import sys


def test_submodules_are_attributes_after_a_bare_import():
    code = "import effdl; print(effdl.checkpoint.load_model.__name__, effdl.measure.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr  # was: AttributeError: module 'effdl' has no attribute 'checkpoint'
    assert out.stdout.split() == ["load_model", "effdl.measure"]


def test_a_bare_import_does_not_import_torch():
    out = subprocess.run([sys.executable, "-c", "import sys, effdl; print('torch' in sys.modules)"],
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False"


def test_status_lines_come_from_rank_zero_only(monkeypatch, capsys):
    from effdl.console import say

    monkeypatch.setenv("RANK", "1")  # torchrun's second process: a library call there stays quiet
    say("from rank 1")
    monkeypatch.setenv("RANK", "0")
    say("from rank 0")
    monkeypatch.delenv("RANK")
    say("outside torchrun")
    captured = capsys.readouterr()
    assert captured.err.splitlines() == ["from rank 0", "outside torchrun"]
    assert captured.out == ""


# Library code that writes to stderr directly, and why it may: each prints on purpose per process.
DIRECT_STDERR = {
    "console.py": "say itself",
    "train/trainer.py": "the epoch lines of a progress that only rank 0 creates",
    "train/run.py": "a process's own error, with its rank, to sys.__stderr__",
    "search/sweep.py": "a sweep worker process's own error",
}


def test_library_status_lines_go_through_say():
    """A status line printed straight to stderr appears once per process under torchrun: library
    code (outside the CLI, which silences other ranks itself) uses effdl.console.say."""
    import ast
    from pathlib import Path

    src = Path(__file__).resolve().parents[1] / "src" / "effdl"
    direct = set()
    for path in src.rglob("*.py"):
        relative = path.relative_to(src).as_posix()
        if relative.startswith("cli/"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print" and any(
                    k.arg == "file" and "stderr" in ast.unparse(k.value) for k in node.keywords):
                direct.add(relative)
    assert direct == set(DIRECT_STDERR), f"print to stderr outside say: {sorted(direct - set(DIRECT_STDERR))}"
