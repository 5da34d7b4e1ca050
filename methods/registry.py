"""Methods by name (timm-style registry: a decorator on the class, a small factory)."""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # methods.base imports torch; the registry's names are listed without it (fast --help)
    from methods.base import Method, MethodConfig

_SHARED_MODULES = frozenset({"released", "base", "registry", "weights", "vit_m2f"})
"""Modules of the ``methods`` package that hold shared pieces, not methods."""


class _Registry:
    def __init__(self) -> None:
        self._classes: dict[str, type[Method]] = {}
        self._imported = False

    def register(self, cls: type[Method]) -> type[Method]:
        if not cls.name:
            raise ValueError(f"{cls.__qualname__} has no `name`")
        existing = self._classes.get(cls.name)
        if existing is not None and existing is not cls:
            raise ValueError(f"method name {cls.name!r} already registered by {existing.__module__}")
        self._classes[cls.name] = cls
        return cls

    def _import_all(self) -> None:
        if not self._imported:
            self._imported = True
            # one file per method (timm-style): importing it registers the class
            for name in method_module_names():
                importlib.import_module(f"methods.{name}")

    def get(self, name: str) -> type[Method]:
        self._import_all()
        try:
            return self._classes[name]
        except KeyError:
            raise KeyError(f"unknown method {name!r}; available: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        self._import_all()
        return sorted(self._classes)


def method_module_names() -> list[str]:
    """The method files of the ``methods`` package, without importing them (nor torch). Each file is named
    after the method it registers (a test checks this), so this is also the list of method names."""
    import methods

    return sorted(info.name for info in pkgutil.iter_modules(methods.__path__)
                  if not info.ispkg and not info.name.startswith("_") and info.name not in _SHARED_MODULES)


REGISTRY = _Registry()
register_method = REGISTRY.register


def get_method_class(name: str) -> type[Method]:
    return REGISTRY.get(name)


def list_methods() -> list[str]:
    return REGISTRY.names()


def create_method(name: str, backbone: str | None = None, *, scale: str = "paper",
                  config: MethodConfig | None = None, **overrides: Any) -> Method:
    """Build a method from its default config for (backbone, scale), with field overrides."""
    cls = get_method_class(name)
    if config is None:
        config = cls.default_config(backbone, scale=scale)
    for key, value in overrides.items():
        if not hasattr(config, key):
            raise TypeError(f"{cls.__name__} config has no field {key!r}")
        setattr(config, key, value)
    return cls(config)
