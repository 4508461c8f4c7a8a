"""The run directory: the one contract between the runs (``lora_study``) and the analyses (``analysis``).

This module alone builds paths inside a run or study directory. Layout, schema version 1::

    <run>/
      .hydra/                     the composed config (written by Hydra)
      metrics.jsonl               one JSON object per logged step / evaluation
      summary.json                final metrics, accounting, probes; written last, with status
      delta.safetensors           fp32 ΔW per analysed 2-D weight, keyed by module path (save_delta)
      spectrum.safetensors        singular values of every ΔW, same keys (save_spectrum)
      predictions.safetensors     per-example outputs in split order, for paired tests: ``test.correct``,
                                  ``test.prediction``, ``test.label``, ``test.loss`` (classification) or
                                  ``test.nll``, ``test.tokens`` (language modelling), and per held-out task
                                  ``heldout.<task>.<field>`` (base and finetuned probe correctness, NLL, ...)
      adapter/                    LoRA only: peft's adapter_config.json + adapter_model.safetensors
      model/                      full FT with run.save_model=true only

    <study>/
      study.json                  index: shared settings, members (arm, title, options, lr), their status, the
                                  learning-rate search (every tried rate's validation score, the choice) and
                                  the evidence behind shipped rates (study.lr_evidence)
      runs/<member>/              one run directory per member
      lr_search/<member>/         the learning-rate search's validation runs (study.lr_search=true)

Member ids name a study's runs: ``<arm>[_<axis><value>]_s<seed>`` (``full_s0``, ``lora_r8_s0``,
``lora_all_r16_s0``, ``subspace_did_d100_s0``); ``member_id`` builds them and ``parse_member_id`` reads them back.

Every file is written atomically (temporary file, then rename), so a killed run never leaves a file
that looks whole; ``summary.json`` with ``status: complete`` is written last and is what marks a run
as done (``check_complete`` then verifies that every other expected file is present and readable).
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import torch
from safetensors import safe_open
from safetensors.torch import save_file

SCHEMA_VERSION = 1
SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
DELTA = "delta.safetensors"
SPECTRUM = "spectrum.safetensors"
PREDICTIONS = "predictions.safetensors"
ADAPTER_DIR = "adapter"
MODEL_DIR = "model"
STUDY_INDEX = "study.json"
RUNS_DIR = "runs"
SEARCH_DIR = "lr_search"


class ArtifactError(RuntimeError):
    """A run or study directory is missing, incomplete or corrupt; the message says which and why."""


# -- atomic writes -----------------------------------------------------------------------------

def atomic_write(path: Path, write) -> None:
    """Write ``path`` through ``write(temporary path)`` and rename it into place, so it is whole or absent."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; artifacts are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: Path, obj: Any) -> None:
    def w(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=False, default=_jsonable)
            f.flush()
            os.fsync(f.fileno())
    atomic_write(path, w)


def write_tensors(path: Path, tensors: Dict[str, torch.Tensor], metadata: Optional[Dict[str, str]] = None) -> None:
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = {"schema_version": str(SCHEMA_VERSION), **(metadata or {})}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def _jsonable(o: Any) -> Any:
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def read_json(path: Path) -> Any:
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path} does not exist.")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path} is not valid JSON ({e}); the file is corrupt or was cut short.") from e


# -- member ids ----------------------------------------------------------------------------------

AXIS_PREFIX = {"rank": "r", "d": "d"}  # the letter an axis value carries in a member id
_MEMBER = re.compile(r"^(?P<arm>[a-z][a-z0-9_]*?)(?:_(?P<prefix>[a-z])(?P<value>\d+))?_s(?P<seed>\d+)$")


def arm_key(arm: str, axis: Optional[str] = None, value: Optional[int] = None) -> str:
    """``lora_r8``: an arm (a method, or a method and variant) and its swept value, without a seed."""
    return f"{arm}_{AXIS_PREFIX[axis]}{int(value)}" if axis is not None and value is not None else arm


def member_id(arm: str, seed: int, axis: Optional[str] = None, value: Optional[int] = None) -> str:
    """``lora_r8_s0``: the arm, the swept axis value, the seed."""
    return f"{arm_key(arm, axis, value)}_s{int(seed)}"


def search_id(arm: str, lr: float, axis: Optional[str] = None, value: Optional[int] = None,
              seed: Optional[int] = None) -> str:
    """``lora_r8_lr0.005_s1``: one validation run of the learning-rate search (at one seed)."""
    return f"{arm_key(arm, axis, value)}_lr{lr:g}" + ("" if seed is None else f"_s{int(seed)}")


def parse_member_id(member: str) -> Dict[str, Any]:
    """{arm, axis, value, seed} of a member id; ArtifactError for anything else."""
    m = _MEMBER.match(member)
    if not m:
        raise ArtifactError(f"{member!r} is not a member id of the form <arm>[_r<rank>|_d<dim>]_s<seed>.")
    axis = {v: k for k, v in AXIS_PREFIX.items()}.get(m.group("prefix")) if m.group("prefix") else None
    if m.group("prefix") and axis is None:
        raise ArtifactError(f"{member!r} has an unknown axis letter {m.group('prefix')!r}.")
    return {"arm": m.group("arm"), "axis": axis, "value": int(m.group("value")) if m.group("value") else None,
            "seed": int(m.group("seed"))}


# -- runs ----------------------------------------------------------------------------------------

def expected_files(summary: Dict[str, Any]) -> List[str]:
    """The files a complete run holds, given what its summary says it saved."""
    files = [SUMMARY, METRICS, ".hydra/config.yaml"]
    saved = summary.get("saved", {})
    if saved.get("delta"):
        files.append(DELTA)
    if saved.get("spectrum"):
        files.append(SPECTRUM)
    if saved.get("predictions"):
        files.append(PREDICTIONS)
    if saved.get("adapter"):
        files += [f"{ADAPTER_DIR}/adapter_config.json", f"{ADAPTER_DIR}/adapter_model.safetensors"]
    if saved.get("model"):
        files.append(f"{MODEL_DIR}/config.json")
    return files


@dataclass
class RunDir:
    """A run's directory: writing during the run, lazy reading afterwards."""

    path: Path

    def __post_init__(self):
        self.path = Path(self.path)

    # writing
    def file(self, name: str) -> Path:
        return self.path / name

    def clear_outputs(self) -> None:
        """Remove what an interrupted earlier attempt left, keeping Hydra's ``.hydra/``."""
        for name in (SUMMARY, METRICS, DELTA, SPECTRUM, PREDICTIONS):
            p = self.path / name
            if p.exists():
                p.unlink()
        for d in (ADAPTER_DIR, MODEL_DIR):
            p = self.path / d
            if p.exists():
                import shutil
                shutil.rmtree(p)

    def discard_partial(self) -> None:
        """Remove what a failed run may have left half-done: ΔW, spectra, adapter, model and the temporary files
        of writes it did not finish (the summary and metrics stay, to say what happened)."""
        for name in (DELTA, SPECTRUM):
            p = self.path / name
            if p.exists():
                p.unlink()
        for d in (ADAPTER_DIR, MODEL_DIR):
            p = self.path / d
            if p.exists():
                import shutil
                shutil.rmtree(p)
        for tmp in self.path.glob(".*.tmp"):
            tmp.unlink()

    def log(self, record: Dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / METRICS, "a") as f:
            f.write(json.dumps(record, default=_jsonable) + "\n")

    def write_summary(self, summary: Dict[str, Any]) -> None:
        write_json(self.path / SUMMARY, {"schema_version": SCHEMA_VERSION, **summary})

    def write_delta(self, deltas: Dict[str, torch.Tensor]) -> None:
        write_tensors(self.path / DELTA, {k: v.float() for k, v in deltas.items()})

    def write_spectrum(self, spectra: Dict[str, torch.Tensor]) -> None:
        write_tensors(self.path / SPECTRUM, {k: v.float() for k, v in spectra.items()})

    def write_predictions(self, arrays: Dict[str, Any]) -> None:
        """Per-example outputs (numpy arrays or tensors; booleans stored as uint8)."""
        def tensor(a):
            t = torch.as_tensor(a)
            return t.to(torch.uint8) if t.dtype == torch.bool else t
        write_tensors(self.path / PREDICTIONS, {k: tensor(v) for k, v in arrays.items()})

    # reading
    def summary(self) -> Dict[str, Any]:
        s = read_json(self.path / SUMMARY)
        if s.get("schema_version") != SCHEMA_VERSION:
            raise ArtifactError(
                f"{self.path / SUMMARY} has schema version {s.get('schema_version')}, this suite reads {SCHEMA_VERSION}.")
        return s

    def metrics(self) -> List[Dict[str, Any]]:
        p = self.path / METRICS
        if not p.exists():
            return []
        out = []
        for line in p.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
        return out

    def config(self) -> Dict[str, Any]:
        from omegaconf import OmegaConf
        p = self.path / ".hydra" / "config.yaml"
        if not p.exists():
            raise ArtifactError(f"{p} does not exist; {self.path} is not a run directory.")
        return OmegaConf.to_container(OmegaConf.load(p), resolve=False)

    def check_complete(self) -> Optional[str]:
        """None when the run is complete and every artifact is readable, else the reason it is not."""
        if not (self.path / SUMMARY).exists():
            return "no summary.json (the run did not finish)"
        try:
            s = self.summary()
        except ArtifactError as e:
            return str(e)
        if s.get("status") != "complete":
            return f"status is {s.get('status')!r}: {s.get('reason', 'no reason recorded')}"
        for name in expected_files(s):
            if not (self.path / name).exists():
                return f"{name} is missing"
        for name in (DELTA, SPECTRUM, PREDICTIONS, f"{ADAPTER_DIR}/adapter_model.safetensors"):
            if name in expected_files(s):
                try:
                    with safe_open(str(self.path / name), "pt") as f:
                        keys = list(f.keys())
                        if keys:
                            f.get_slice(keys[-1])
                except Exception as e:  # noqa: BLE001 - any failure means the file is unusable
                    return f"{name} is unreadable ({type(e).__name__}: {e})"
        return None

    def _tensor_keys(self, name: str) -> List[str]:
        p = self.path / name
        if not p.exists():
            raise ArtifactError(f"{p} does not exist (was the run saved with run.save_delta=false?).")
        try:
            with safe_open(str(p), "pt") as f:
                return list(f.keys())
        except Exception as e:  # noqa: BLE001
            raise ArtifactError(f"{p} is not a readable safetensors file ({e}).") from e

    def delta_names(self) -> List[str]:
        return self._tensor_keys(DELTA)

    def delta(self, name: str) -> torch.Tensor:
        """ΔW of one module, read lazily (one matrix in memory at a time)."""
        with safe_open(str(self.path / DELTA), "pt") as f:
            if name not in f.keys():
                raise ArtifactError(f"{name} is not in {self.path / DELTA}.")
            return f.get_tensor(name)

    def iter_deltas(self, names: Optional[List[str]] = None) -> Iterator[tuple]:
        with safe_open(str(self.path / DELTA), "pt") as f:
            for n in names or list(f.keys()):
                yield n, f.get_tensor(n)

    def spectra(self) -> Dict[str, torch.Tensor]:
        keys = self._tensor_keys(SPECTRUM)
        with safe_open(str(self.path / SPECTRUM), "pt") as f:
            return {k: f.get_tensor(k) for k in keys}

    def predictions(self) -> Dict[str, Any]:
        """The per-example outputs as numpy arrays (correctness as booleans), by key."""
        keys = self._tensor_keys(PREDICTIONS)
        with safe_open(str(self.path / PREDICTIONS), "pt") as f:
            out = {k: f.get_tensor(k).numpy() for k in keys}
        return {k: v.astype(bool) if k.endswith("correct") else v for k, v in out.items()}

    def adapter_factors(self) -> Dict[str, Dict[str, torch.Tensor]]:
        """{module path: {"A": lora_A (r × d_in), "B": lora_B (d_out × r)}} from the saved peft adapter."""
        path = self.path / ADAPTER_DIR / "adapter_model.safetensors"
        if not path.exists():
            raise ArtifactError(f"{path} does not exist (only LoRA runs save an adapter).")
        out: Dict[str, Dict[str, torch.Tensor]] = {}
        with safe_open(str(path), "pt") as f:
            for key in f.keys():
                m = re.match(r"^(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.[^.]+)?\.weight$", key)
                if m:
                    out.setdefault(m.group(1), {})[m.group(2)] = f.get_tensor(key).float()
        return out

    def adapter_dir(self) -> Path:
        return self.path / ADAPTER_DIR

    def model_dir(self) -> Path:
        return self.path / MODEL_DIR

    def base_weight(self, name: str) -> torch.Tensor:
        """W_pre of a module, read from the base model's own files (never copied into the run)."""
        base = self.summary().get("base_model", {})
        return BaseWeights(base.get("path"), base.get("name")).get(name)


class BaseWeights:
    """Reads pretrained weights lazily from a model directory's safetensors files."""

    def __init__(self, path: Optional[str], name: Optional[str] = None):
        self.path = _resolve_model_dir(path, name)
        self._index: Optional[Dict[str, Path]] = None

    def _build_index(self) -> Dict[str, Path]:
        files = sorted(self.path.glob("*.safetensors"))
        if not files:
            raise ArtifactError(f"{self.path} holds no .safetensors files to read the base weights from.")
        index = {}
        for fp in files:
            with safe_open(str(fp), "pt") as f:
                for k in f.keys():
                    index[k] = fp
        return index

    def key(self, module: str) -> str:
        """The checkpoint's name for ``module``'s weight (read from the files' headers only); ArtifactError when the
        base model has none."""
        if self._index is None:
            self._index = self._build_index()
        key = module if module.endswith(".weight") else module + ".weight"
        parts = key.split(".")
        # the task model may add a prefix (bert., model., roberta.) that the checkpoint lacks, or vice versa
        candidates = [key] + [".".join(parts[i:]) for i in range(1, min(3, len(parts)))]
        for c in candidates:
            for stored in (c, "model." + c, "bert." + c):
                if stored in self._index:
                    return stored
        raise ArtifactError(f"module {module} has no weight in the base model at {self.path}.")

    def get(self, module: str) -> torch.Tensor:
        stored = self.key(module)
        with safe_open(str(self._index[stored]), "pt") as f:
            return f.get_tensor(stored).float()


def _resolve_model_dir(path: Optional[str], name: Optional[str]) -> Path:
    if path and Path(path).is_dir():
        return Path(path)
    if name and Path(name).is_dir():
        return Path(name)
    if name:
        try:
            from huggingface_hub import snapshot_download
            return Path(snapshot_download(name, local_files_only=True, allow_patterns=["*.json", "*.safetensors"]))
        except Exception as e:  # noqa: BLE001
            raise ArtifactError(f"the base model {name} is not available locally ({type(e).__name__}).") from e
    raise ArtifactError(f"the base model directory {path} does not exist.")


# -- studies -------------------------------------------------------------------------------------

@dataclass
class StudyDir:
    path: Path

    def __post_init__(self):
        self.path = Path(self.path)

    @property
    def index_path(self) -> Path:
        return self.path / STUDY_INDEX

    @staticmethod
    def subdir(member: str, phase: str = "main") -> str:
        """Where a member's run lives inside the study: ``runs/<member>``, or ``lr_search/<member>``."""
        return f"{SEARCH_DIR if phase == 'lr_search' else RUNS_DIR}/{member}"

    def run_path(self, member: str, phase: str = "main") -> Path:
        return self.path / self.subdir(member, phase)

    def run(self, member: str, phase: str = "main") -> RunDir:
        return RunDir(self.run_path(member, phase))

    def exists(self) -> bool:
        return self.index_path.exists()

    def index(self) -> Dict[str, Any]:
        if not self.index_path.exists():
            raise ArtifactError(f"{self.path} is not a study directory (it has no {STUDY_INDEX}).")
        idx = read_json(self.index_path)
        if idx.get("schema_version") != SCHEMA_VERSION:
            raise ArtifactError(
                f"{self.index_path} has schema version {idx.get('schema_version')}, this suite reads {SCHEMA_VERSION}.")
        return idx

    def write_index(self, index: Dict[str, Any]) -> None:
        write_json(self.index_path, {**index, "schema_version": SCHEMA_VERSION})
