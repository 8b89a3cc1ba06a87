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
