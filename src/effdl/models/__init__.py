"""The model zoo: CIFAR-sized architectures by name, plus any torchvision model as `tv:NAME`."""

from effdl.models.registry import create_model, list_models, model_spec, register_model

# Importing each family registers its models.
from effdl.models import resnet  # noqa: F401  isort: skip

__all__ = ["create_model", "list_models", "model_spec", "register_model"]
