"""The model zoo: CIFAR-sized architectures by name, plus any torchvision model as `tv:NAME`."""

from effdl.models.registry import (
    create_model, create_model_for_data, data_meta, list_models, model_input_size, model_spec, register_model,
)

# Importing each family registers its models.
from effdl.models import resnet  # noqa: F401  isort: skip
from effdl.models import (  # noqa: F401  isort: skip
    densenet,
    fastnet,
    ghostnet,
    mobilenet,
    mobilenetv3,
    preact_resnet,
    resnext,
    searchable,
    senet,
    shiftnet,
    shufflenet,
    squeezenet,
    vgg,
    wrn,
)
from effdl.models.catalog import count_parameters, describe_models  # noqa: E402

__all__ = [
    "count_parameters",
    "create_model",
    "create_model_for_data",
    "describe_models",
    "list_models",
    "model_spec",
    "register_model",
]
