"""Finetuning methods as a registry: one module per family of methods, each a ``Method`` (``methods.base``).

- ``baselines``: the frozen base (only the task head trains) and full finetuning;
- ``lora``: LoRA through peft (rsLoRA, DoRA and initialisations as options) and QLoRA, LoRA on a 4-bit base;
- ``intrinsic``: subspace training for intrinsic dimension (DID and SAID), its projections in ``projections``.

A new method is one module: a ``Method`` subclass (with its schema) passed to ``register``, plus its line in the
import list at the bottom of this file. Its schema becomes the config option ``method=<name>`` through Hydra's
ConfigStore (a method with defaults of its own sets ``config_file`` and keeps them in ``conf/method/<name>.yaml``,
which extends ``<name>_schema``), studies plan its members, runs train it, and the analyses place its runs by their recorded family and arm, with no other file edited.
"""
from __future__ import annotations

from typing import Dict, List

from ..schema import ConfigError
from .base import Method, MethodConfig, Prepared, Variant  # noqa: F401 - the interface, re-exported

_METHODS: Dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add ``method`` to the registry and its config group option to Hydra's ConfigStore: ``method=<name>`` is its
    schema with its defaults (no YAML file needed), and ``<name>_schema`` the schema for a YAML file of its own to
    extend. A ``conf/method/<name>.yaml`` comes first in Hydra's search path, so a method that wants other defaults
    (or a comment showing its command) keeps them there."""
    from hydra.core.config_store import ConfigStore
    _METHODS[method.name] = method
    store = ConfigStore.instance()
    store.store(group="method", name=f"{method.name}_schema", node=method.schema)
    if not method.config_file:
        store.store(group="method", name=method.name, node=method.schema(name=method.name))
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
