"""effdl: train, compress and honestly measure efficient CNN image classifiers."""

from effdl.errors import EffdlError
from effdl.models import create_model, list_models

__version__ = "0.1.0"
__all__ = ["EffdlError", "create_model", "list_models", "__version__"]
