"""effdl: train, compress and honestly measure efficient CNN image classifiers."""

from typing import TYPE_CHECKING

from effdl.errors import EffdlError

__version__ = "0.1.0"
_SUBMODULES = ("checkpoint", "compress", "data", "deploy", "measure", "models", "report", "train")
__all__ = ["EffdlError", "create_model", "list_models", "__version__"]

if TYPE_CHECKING:
    from effdl.models import create_model, list_models


def __getattr__(name: str):
    """`effdl.create_model` and `effdl.list_models` import the model zoo (and torch) on first use,
    so `import effdl` (and `effdl --help`) stays light."""
    if name in ("create_model", "list_models"):
        import effdl.models

        return getattr(effdl.models, name)
    if name in _SUBMODULES:  # `import effdl; effdl.checkpoint.load_model(...)`, as the README writes it
        import importlib

        return importlib.import_module(f"effdl.{name}")
    raise AttributeError(f"module 'effdl' has no attribute '{name}'")
