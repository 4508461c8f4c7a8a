"""Read an offline wandb run back from its ``run-<id>.wandb`` file, for tests.

wandb 0.31 has no Python reader of its own any more (the Go core writes the file), so this parses the format
directly: a 7-byte header (``:W&B``, magic 0xBEE1, version), then 32 KiB blocks of LevelDB-log-style chunks,
each with a CRC-32 (of the chunk type byte and the data), a length and a type (full, first, middle, last);
every reassembled record is a ``wandb.proto.wandb_internal_pb2.Record``. The checksums are verified, so a
misread frame fails loudly instead of yielding garbage.

``run.finish()`` can return before wandb's core process has written the last records, so ``read_run`` waits
for the run's ``exit`` record, which is written last.
"""
from __future__ import annotations

import json
import struct
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List

BLOCK = 32768
HEADER = struct.Struct("<4sHB")
CHUNK = struct.Struct("<IHB")
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> Iterator[bytes]:
    data = Path(path).read_bytes()
    ident, magic, _ = HEADER.unpack_from(data)
    assert ident == b":W&B" and magic == 0xBEE1, f"{path} is not a wandb transaction log"
    pos, pending = HEADER.size, b""
    while pos + CHUNK.size <= len(data):
        left = BLOCK - pos % BLOCK
        if left < CHUNK.size:  # the rest of a block too short for a chunk header is padding
            pos += left
            continue
        crc, length, kind = CHUNK.unpack_from(data, pos)
        if kind == 0 and length == 0:
            pos += left
            continue
        if pos + CHUNK.size + length > len(data):  # a chunk still being written
            break
        chunk = data[pos + CHUNK.size: pos + CHUNK.size + length]
        assert zlib.crc32(bytes([kind]) + chunk) & 0xFFFFFFFF == crc, f"bad checksum at byte {pos} of {path}"
        pos += CHUNK.size + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk
            pending = b""


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


@dataclass
class OfflineRun:
    name: str = ""
    group: str = ""
    project: str = ""
    config: Dict[str, Any] = field(default_factory=dict)
    history: List[Dict[str, Any]] = field(default_factory=list)  # one row per committed step, with "_step"
    summary: Dict[str, Any] = field(default_factory=dict)
    exited: bool = False  # the exit record, written last, is there

    def at_step(self, step: int) -> Dict[str, Any]:
        return next(r for r in self.history if r.get("_step") == step)


def read_run(path: Path, wait_s: float = 60.0) -> OfflineRun:
    """The run in ``path``, once its exit record is there (AssertionError after ``wait_s`` seconds without)."""
    deadline = time.monotonic() + wait_s
    while True:
        run = _parse(path)
        if run.exited:
            return run
        assert time.monotonic() < deadline, f"{path} has no exit record after {wait_s:g} s"
        time.sleep(0.2)


def _parse(path: Path) -> OfflineRun:
    from wandb.proto import wandb_internal_pb2 as pb
    run = OfflineRun()
    for raw in records(path):
        r = pb.Record()
        r.ParseFromString(raw)
        kind = r.WhichOneof("record_type")
        if kind == "run":
            run.name, run.group, run.project = r.run.display_name, r.run.run_group, r.run.project
            run.config.update({_key(u): json.loads(u.value_json) for u in r.run.config.update})
        elif kind == "config":
            run.config.update({_key(u): json.loads(u.value_json) for u in r.config.update})
        elif kind == "history":
            run.history.append({_key(i): json.loads(i.value_json) for i in r.history.item})
        elif kind == "summary":
            run.summary.update({_key(u): json.loads(u.value_json) for u in r.summary.update})
        elif kind == "exit":
            run.exited = True
    return run


def offline_runs(directory: Path) -> List[Path]:
    """The ``.wandb`` files of the offline runs under ``directory`` (wandb/offline-run-*/run-*.wandb)."""
    return sorted(Path(directory).glob("wandb/offline-run-*/run-*.wandb"))
