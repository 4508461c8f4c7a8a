"""The run directory: the one contract between the runs (``lora_study``) and the analyses (``analysis``).

This module alone builds paths inside a run or study directory, and it is all the analyses import of the training
side (with the pure linear algebra of ``lora_study.linalg``): it imports no torch, no transformers, no peft, and
no method registry, so a study copied to a laptop is read with nothing but this file's dependencies. Layout,
schema version 2::

    <run>/
      .hydra/                     the composed config (written by Hydra)
      metrics.jsonl               one JSON object per logged step / evaluation
      summary.json                final metrics, accounting, probes, and ``placement`` (below); written last,
                                  with status
      delta.safetensors           fp32 ΔW per analysed 2-D weight, keyed by module path (save_delta)
      spectrum.safetensors        singular values of every ΔW, same keys (save_spectrum)
      predictions.safetensors     per-example outputs in split order, for paired tests: ``test.correct``,
                                  ``test.prediction``, ``test.label``, ``test.loss`` (classification) or
                                  ``test.nll``, ``test.tokens`` (language modelling), and per held-out task
                                  ``heldout.<task>.<field>`` (base and finetuned probe correctness, NLL, ...)
      adapter/                    LoRA only: peft's adapter_config.json + adapter_model.safetensors
      model/                      full FT with run.save_model=true only

    <study>/
      study.json                  index: shared settings, members (each with its placement and options, lr), their
                                  status, the learning-rate search (every tried rate's validation score, the choice)
                                  and the evidence behind shipped rates (study.lr_evidence)
      runs/<member>/              one run directory per member
      lr_search/<member>/         the learning-rate search's validation runs (study.lr_search=true)

A member's **placement** (``PLACEMENT``) is everything the analyses need to place a run without the code that
trained it: its method and the method's **family** (what claims about "LoRA" read: a rank-swept method of another
family gets rows of its own), its **arm** and the arm's **title**, its display **label**, the **axis** it is swept
over ("rank", "d" or none) and its **value** there, its **role** ("baseline": the frozen base gains are measured
from; "reference": full finetuning, what others are compared with; "treatment": the rest), its **variant** (DID or
SAID for subspace training), the arm's **order** in the study, and (in a run's summary) **delta_scope**, what its
saved ΔW covers. The planner writes it into every member of ``study.json``, each run into its ``summary.json``.
Schema 1 directories, written before placements existed, are migrated on read (``migrate_member``): the built-in
methods' placements are known here, and any other method is a treatment of a family of its own.

Member ids name a study's runs: ``<arm>[_<axis><value>]_s<seed>`` (``full_s0``, ``lora_r8_s0``,
``lora_all_r16_s0``, ``subspace_did_d100_s0``); ``member_id`` builds them and ``parse_member_id`` reads them back.

Every file is written atomically (temporary file, then rename), so a killed run never leaves a file
that looks whole; ``summary.json`` with ``status: complete`` is written last and is what marks a run
as done (``check_complete`` then verifies that every other expected file is present and readable).
Tensors are read and written through safetensors; torch is imported when a tensor is, never by importing this
module.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

from safetensors import safe_open

SCHEMA_VERSION = 2
READS = (1, 2)  # schema versions this suite reads (1 migrated on read)
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


def write_tensors(path: Path, tensors: Dict[str, Any], metadata: Optional[Dict[str, str]] = None) -> None:
    from safetensors.torch import save_file
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = {"schema_version": str(SCHEMA_VERSION), **(metadata or {})}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def _jsonable(o: Any) -> Any:
    if hasattr(o, "tolist") and hasattr(o, "detach"):  # a torch tensor
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


# -- placements ----------------------------------------------------------------------------------

BASELINE, REFERENCE, TREATMENT = "baseline", "reference", "treatment"
ROLES = (BASELINE, REFERENCE, TREATMENT)
# what a study index's member record says of its run, and a run's summary under "placement"
PLACEMENT = ("family", "method", "arm", "title", "label", "axis", "value", "role", "variant", "order")
# the built-in methods as schema 1 wrote them (no placement): what migration fills in
_V1 = {"none": ("none", BASELINE, None, "frozen base"), "full": ("full", REFERENCE, None, "full FT"),
       "lora": ("lora", TREATMENT, "rank", "LoRA"), "qlora": ("lora", TREATMENT, "rank", "QLoRA"),
       "subspace": ("subspace", TREATMENT, "d", "subspace")}


def label_of(title: str, axis: Optional[str], value: Optional[int], variant: Optional[str] = None) -> str:
    """How tables name a member: 'full FT', 'LoRA r=8', 'LoRA (all linear) r=16', 'subspace SAID d=1000'."""
    if axis is None or value is None:
        return title
    return f"{title}{f' {variant}' if variant else ''} {AXIS_PREFIX.get(axis, axis)}={int(value)}"


def _title_from_label(label: Optional[str], axis: Optional[str], value: Any, variant: Optional[str]) -> Optional[str]:
    """The arm's title a schema 1 label carries ('LoRA (all linear)' of 'LoRA (all linear) r=16'), if it has one."""
    if not isinstance(label, str) or axis is None or value is None:
        return None
    suffix = f"{f' {variant}' if variant else ''} {AXIS_PREFIX.get(axis, axis)}={int(value)}"
    return label[:-len(suffix)] if label.endswith(suffix) and len(label) > len(suffix) else None


def migrate_member(record: Dict[str, Any], order: int = 0) -> Dict[str, Any]:
    """A schema 1 member record with its placement filled in: the built-in methods' from the table above, any other
    method's as a treatment of a family of its own, swept over the rank or d it recorded."""
    method = record.get("method")
    family, role, axis, title = _V1.get(method) or (method, TREATMENT, "rank" if record.get("rank") is not None else
                                                    "d" if record.get("d") is not None else None, method)
    axis = record.get("axis", axis) if method not in _V1 else axis
    value = record.get("value")
    if value is None and axis is not None:
        value = record.get(axis)
    variant = ("SAID" if record.get("said") else "DID") if family == "subspace" else None
    title = record.get("title") or _title_from_label(record.get("label"), axis, value, variant) or title
    if family == "subspace":
        title = title.split(" (")[0] if record.get("title") is None else title
    return {**record, "family": family, "role": role, "axis": axis, "value": None if value is None else int(value),
            "title": title, "variant": variant, "order": record.get("order", order),
            "label": label_of(title, axis, value, variant)}


def migrate_index(index: Dict[str, Any]) -> Dict[str, Any]:
    """A schema 1 study index read as schema 2: every member's placement filled in (arms in order of appearance)."""
    arms: Dict[str, int] = {}
    members = []
    for m in index.get("members", []):
        arm = m.get("arm") or m.get("method")
        arms.setdefault(arm, len(arms))
        members.append(migrate_member({**m, "arm": arm}, arms[arm]))
    return {**index, "members": members, "schema_version": SCHEMA_VERSION, "migrated_from": index.get("schema_version")}


def placement(record: Dict[str, Any]) -> Dict[str, Any]:
    """The placement fields of a member record, checked: ArtifactError naming the member when one is missing."""
    missing = [k for k in PLACEMENT if k not in record]
    if missing or record.get("role") not in ROLES:
        raise ArtifactError(f"member {record.get('id')!r} of the study index lacks its placement "
                            f"({', '.join(missing) or 'role'}); the index is damaged or was not written by this suite.")
    return {k: record[k] for k in PLACEMENT}


# -- module names ---------------------------------------------------------------------------------

_KINDS = [  # (regex on the module path, kind)
    (r"attention\.self\.query$|self_attn\.q_proj$|attn\.q_proj$", "query"),
    (r"attention\.self\.key$|self_attn\.k_proj$|attn\.k_proj$", "key"),
    (r"attention\.self\.value$|self_attn\.v_proj$|attn\.v_proj$", "value"),
    (r"attention\.output\.dense$|self_attn\.o_proj$|attn\.o_proj$", "attn_out"),
    (r"intermediate\.dense$|mlp\.up_proj$|mlp\.fc1$", "ffn_in"),
    (r"mlp\.gate_proj$", "ffn_gate"),
    (r"(?<!attention\.)output\.dense$|mlp\.down_proj$|mlp\.fc2$", "ffn_out"),
]
MODULE_KINDS = ("query", "key", "value", "attn_out", "ffn_in", "ffn_gate", "ffn_out")
# where LoRA goes (``method.target_modules``): each preset's module kinds (a model without a gate has no ffn_gate)
TARGET_PRESETS = {
    "attn_qv": ("query", "value"),
    "attn": ("query", "key", "value", "attn_out"),
    "mlp": ("ffn_in", "ffn_gate", "ffn_out"),
    "all_linear": ("query", "key", "value", "attn_out", "ffn_in", "ffn_gate", "ffn_out"),
}


def target_preset(modules) -> Optional[str]:
    """The preset whose module kinds are exactly those of ``modules`` (module paths), ffn_gate counted only where
    the model has one; None for another set."""
    kinds = {module_kind(m) for m in modules} - {None}
    for name, preset in TARGET_PRESETS.items():
        if kinds and kinds == set(preset) - ({"ffn_gate"} - kinds):
            return name
    return None


def module_kind(name: str) -> Optional[str]:
    """The role of a linear module inside a transformer block, or None for anything else (the key of ΔW files)."""
    for pattern, kind in _KINDS:
        if re.search(pattern, name):
            return kind
    return None


def module_layer(name: str) -> Optional[int]:
    m = re.search(r"\.(?:layer|layers|h|blocks)\.(\d+)\.", name)
    return int(m.group(1)) if m else None


# the scopes a full finetune's truncated ΔW is evaluated in (``summary.truncation.scopes``)
SCOPES = {
    "finetuned_rest": "every analysed ΔW truncated to rank k; every other parameter finetuned",
    "pretrained_rest": "every analysed ΔW truncated to rank k; every other parameter but the head at W_pre",
    "targets_only": "only the intervention targets carry trunc_k(ΔW); everything else but the head at W_pre",
}


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

    def write_delta(self, deltas: Dict[str, Any]) -> None:
        write_tensors(self.path / DELTA, {k: v.float() for k, v in deltas.items()})

    def write_spectrum(self, spectra: Dict[str, Any]) -> None:
        write_tensors(self.path / SPECTRUM, {k: v.float() for k, v in spectra.items()})

    def write_predictions(self, arrays: Dict[str, Any]) -> None:
        """Per-example outputs (numpy arrays or tensors; booleans stored as uint8)."""
        import torch

        def tensor(a):
            t = torch.as_tensor(a)
            return t.to(torch.uint8) if t.dtype == torch.bool else t
        write_tensors(self.path / PREDICTIONS, {k: tensor(v) for k, v in arrays.items()})

    # reading
    def summary(self) -> Dict[str, Any]:
        s = read_json(self.path / SUMMARY)
        if s.get("schema_version") not in READS:
            raise ArtifactError(f"{self.path / SUMMARY} has schema version {s.get('schema_version')}, this suite reads "
                                f"{', '.join(map(str, READS))}.")
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

    def delta(self, name: str):
        """ΔW of one module, read lazily (one matrix in memory at a time)."""
        with safe_open(str(self.path / DELTA), "pt") as f:
            if name not in f.keys():
                raise ArtifactError(f"{name} is not in {self.path / DELTA}.")
            return f.get_tensor(name)

    def iter_deltas(self, names: Optional[List[str]] = None) -> Iterator[tuple]:
        with safe_open(str(self.path / DELTA), "pt") as f:
            for n in names or list(f.keys()):
                yield n, f.get_tensor(n)

    def spectra(self) -> Dict[str, Any]:
        keys = self._tensor_keys(SPECTRUM)
        with safe_open(str(self.path / SPECTRUM), "pt") as f:
            return {k: f.get_tensor(k) for k in keys}

    def predictions(self) -> Dict[str, Any]:
        """The per-example outputs as numpy arrays (correctness as booleans), by key."""
        keys = self._tensor_keys(PREDICTIONS)
        with safe_open(str(self.path / PREDICTIONS), "pt") as f:
            out = {k: f.get_tensor(k).numpy() for k in keys}
        return {k: v.astype(bool) if k.endswith("correct") else v for k, v in out.items()}

    def adapter_factors(self) -> Dict[str, Dict[str, Any]]:
        """{module path: {"A": lora_A (r × d_in), "B": lora_B (d_out × r)}} from the saved peft adapter."""
        path = self.path / ADAPTER_DIR / "adapter_model.safetensors"
        if not path.exists():
            raise ArtifactError(f"{path} does not exist (only LoRA runs save an adapter).")
        out: Dict[str, Dict[str, Any]] = {}
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

    def base_weight(self, name: str):
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

    def get(self, module: str):
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
        """The study index, its members' placements filled in when it was written at schema version 1."""
        if not self.index_path.exists():
            raise ArtifactError(f"{self.path} is not a study directory (it has no {STUDY_INDEX}).")
        idx = read_json(self.index_path)
        version = idx.get("schema_version")
        if version not in READS:
            raise ArtifactError(f"{self.index_path} has schema version {version}, this suite reads "
                                f"{', '.join(map(str, READS))}.")
        if version == SCHEMA_VERSION:
            return idx
        return migrate_index(idx)

    def write_index(self, index: Dict[str, Any]) -> None:
        write_json(self.index_path, {**index, "schema_version": SCHEMA_VERSION})
