"""Finetuning methods as a registry: one module per family of methods, each a ``Method`` (``methods.base``).

- ``baselines``: the frozen base (only the task head trains) and full finetuning;
- ``lora``: LoRA through peft (rsLoRA, DoRA and initialisations as options) and QLoRA, LoRA on a 4-bit base;
- ``intrinsic``: subspace training for intrinsic dimension (DID and SAID), its projections in ``projections``.

A new method is a ``Method`` subclass passed to ``register``: its schema becomes the config option
``method=<name>`` (through Hydra's ConfigStore, as ``<name>_schema`` for YAML files to extend), studies plan its
members, runs train it, and the analyses find it, with no other file edited.
"""
from __future__ import annotations

from typing import Dict, List

from ..schema import ConfigError
from .base import Method, MethodConfig, Prepared, Variant  # noqa: F401 - the interface, re-exported

_METHODS: Dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add ``method`` to the registry and its schema to Hydra's ConfigStore (group ``method``)."""
    from hydra.core.config_store import ConfigStore
    _METHODS[method.name] = method
    ConfigStore.instance().store(group="method", name=f"{method.name}_schema", node=method.schema)
    return method


def unregister(name: str) -> None:
    _METHODS.pop(name, None)


def get(name: str) -> Method:
    if name not in _METHODS:
        raise ConfigError(f"method.name={name!r} is not valid; choose one of {', '.join(_METHODS)}.")
    return _METHODS[name]


def names() -> List[str]:
    return list(_METHODS)


def order(name: str) -> int:
    """A method's place in the registry: tables list methods in this order."""
    return names().index(name) if name in _METHODS else len(_METHODS)


from . import baselines, lora, intrinsic  # noqa: E402,F401 - the built-in methods register themselves
