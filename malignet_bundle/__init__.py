"""MaligNet bundle: semi-supervised bone-lesion instance segmentation on bone scintigraphy."""

import importlib
from types import ModuleType

__version__ = "0.1.0"


def __getattr__(name: str) -> ModuleType:
    """Import subpackages on first use, so configs can write ``malignet_bundle.data.datalist.…``."""
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as e:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from e
