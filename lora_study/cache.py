"""The suite's cache (``$LORA_STUDY_CACHE``, default ``~/.cache/lora-study``): things that are slow to build and
the same every time — the tiny test models, the converted SmolLM2 checkpoint, parsed held-out corpora, the base
model's held-out features. Entries are keyed by a digest of everything they depend on — their inputs, and
the code and library versions that build them (``code_fingerprint``), so an entry written by an older version of
the suite is never read as if it were current — and published atomically (a file through
``artifacts.atomic_write``, a directory by one rename), so a killed process or two processes building the same
entry never leave a half-written one.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, TypeVar

from .artifacts import atomic_write

T = TypeVar("T")


def cache_dir() -> Path:
    return Path(os.environ.get("LORA_STUDY_CACHE", Path.home() / ".cache" / "lora-study"))


@lru_cache(maxsize=None)
def code_fingerprint(*modules: str) -> str:
    """A digest of the source files of ``modules`` (dotted names) and of the library versions that compute with
    them: part of a cache key, so that editing the code that builds an entry invalidates it."""
    import importlib
    import sklearn
    import torch
    import transformers
    h = hashlib.sha1(f"{torch.__version__}|{transformers.__version__}|{sklearn.__version__}".encode())
    for name in modules:
        h.update(Path(importlib.import_module(name).__file__).read_bytes())
    return h.hexdigest()[:16]


def digest(key: Any, length: int = 16) -> str:
    """A short stable hash of a JSON-able description of what an entry depends on."""
    return hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:length]


def cached_file(namespace: str, key: Any, suffix: str, build: Callable[[], T],
                write: Callable[[T, str], None], read: Callable[[Path], T]) -> T:
    """``read`` the entry ``<cache>/<namespace>/<digest(key)><suffix>`` if it exists; else ``build`` it,
    ``write(value, temporary path)`` it atomically, and return the built value."""
    path = cache_dir() / namespace / f"{digest(key)}{suffix}"
    if path.exists():
        return read(path)
    value = build()
    atomic_write(path, lambda tmp: write(value, tmp))
    return value


def cached_dir(namespace: str, name: str, build: Callable[[Path], None], marker: str) -> Path:
    """The directory ``<cache>/<namespace>/<name>``, built by ``build(temporary directory)`` on first use and
    renamed into place; ``marker`` is a file that only a finished directory holds. If another process
    published the directory first, its copy is kept."""
    out = cache_dir() / namespace / name
    if (out / marker).exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    build(tmp)
    try:
        os.replace(tmp, out)
    except OSError:  # another process won the race
        shutil.rmtree(tmp, ignore_errors=True)
    return out
