import importlib
from types import ModuleType


def __getattr__(name: str) -> ModuleType:
    """Import modules on first use (``malignet_bundle.<package>.<module>`` in configs)."""
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as e:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from e
