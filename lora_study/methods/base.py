"""The finetuning-method interface. A method prepares the pretrained model (freezes, wraps, or re-parametrises
it), says which parameters train and at what rate, reads its ΔW = W_finetuned − W_pretrained after training,
stores what a user would ship per task, hands back the model used for inference, and tells a study which axis
it sweeps (LoRA's rank, subspace training's d, or none) and how its members are named.

Every method trains the task head directly (``method.train_head``), so every metric is comparable.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Optional

import torch

from ..accounting import tensor_bytes
from ..artifacts import BASELINE, REFERENCE, TREATMENT, label_of
from ..models.structure import base_module, block_linears
from ..schema import ConfigError, Free, opt


@dataclass
class MethodConfig:
    """Fields every method has; each method's schema extends it."""
    name: str = opt("none", Free())  # checked against the registry by ``lora_study.config.validate``
    train_head: bool = opt(True, Free())  # the task head is trained in every method


@dataclass
class Prepared:
    model: torch.nn.Module
    analysed: List[str]  # module paths (base model's namespace) whose ΔW is saved and analysed
    targets: List[str] = field(default_factory=list)  # adapted module paths (LoRA)
    head: List[str] = field(default_factory=list)
    info: Dict[str, Any] = field(default_factory=dict)  # what the method chose from the model (recorded in the summary)


@dataclass
class Variant:
    """One study member a method contributes per seed: the arm (its id prefix), the swept value, the
    overrides that configure it and the fields recorded in the study index."""
    arm: str
    value: Optional[int] = None
    overrides: List[str] = field(default_factory=list)
    record: Dict[str, Any] = field(default_factory=dict)


class Method:
    """One finetuning method. Subclasses set the class attributes and override what differs."""

    name: ClassVar[str]
    title: ClassVar[str]  # how reports name it: "LoRA", "full FT"
    # what claims about a kind of method read ("LoRA forgets less": family lora); default: the method's own name, so
    # a new rank-swept method gets rows of its own and is never pooled into another family's
    family: ClassVar[str] = ""
    # True when conf/method/<name>.yaml gives its defaults (extending <name>_schema); else method=<name> is the
    # schema with its own defaults, stored by the registry
    config_file: ClassVar[bool] = False
    schema: ClassVar[type] = MethodConfig
    axis: ClassVar[Optional[str]] = None  # the study axis it is swept over: "rank", "d", or None
    is_baseline: ClassVar[bool] = False  # the frozen base: what finetuning gains are measured from
    is_reference: ClassVar[bool] = False  # full finetuning: what the other methods are compared with
    mergeable: ClassVar[bool] = False  # inference latency unmerged, then merged into the base weights
    has_adapter_factors: ClassVar[bool] = False  # saves low-rank factors (peft's lora_A / lora_B)
    truncates: ClassVar[bool] = False  # evaluates its ΔW truncated to low ranks after training
    probes_during_training: ClassVar[bool] = True  # held-out probes every heldout.every steps
    base_tag: ClassVar[str] = ""  # how the loaded base differs from the checkpoint (QLoRA: "nf4"), for caches
    # how it trains over several processes (train.processes > 1, lora_study.run.distributed): "ddp" (a replica per
    # process, gradients averaged: few trainable parameters), "fsdp" (FSDP2: weights, gradients and optimizer
    # state sharded per transformer block; group_lrs then sees the sharded parameters), None (one process only)
    distributed: ClassVar[Optional[str]] = "ddp"

    # -- checks ----------------------------------------------------------------------------------
    def validate(self, cfg) -> None:
        """Checks that relate this method's fields to the rest of the config (per-field rules are the schema's)."""

    def check_device(self, cfg, device: torch.device) -> None:
        """Refuse a device the method cannot run on, before anything is loaded."""

    def load_options(self, cfg, device: torch.device) -> Dict[str, Any]:
        """Extra arguments for loading the pretrained model (e.g. 4-bit quantisation)."""
        return {}

    # -- a run -----------------------------------------------------------------------------------
    def pretrained_scope(self, model: torch.nn.Module, cfg) -> List[str]:
        """Modules whose W_pre the run copies before ``prepare`` touches the model (to form ΔW = W_ft − W_pre)."""
        return []

    def prepare(self, model: torch.nn.Module, cfg, head: List[str], gradient_checkpointing: bool = False) -> Prepared:
        raise NotImplementedError

    def to_device(self, prepared: Prepared, device: torch.device) -> torch.nn.Module:
        return prepared.model.to(device)

    def group_lrs(self, model, cfg) -> Optional[Dict[int, float]]:
        """{id(parameter): learning rate} for parameters trained at their own rate; None: optim.lr for all."""
        return None

    def summary(self, cfg) -> Dict[str, Any]:
        """What the run summary records about the method's settings (its axis value at least)."""
        return {"rank": None, "d": None}

    def deltas(self, prepared: Prepared, model, w_pre: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """ΔW of every analysed matrix (fp32, CPU), after training."""
        return {}

    def storage(self, model, out, run_cfg, saved: Dict[str, bool]) -> Dict[str, Any]:
        """Bytes a user ships per task (and what they are); may write them into the run directory."""
        head = [p for p in model.parameters() if p.requires_grad]
        return {"bytes": sum(tensor_bytes(p) for p in head), "basis": "classification head"}

    def finish(self, model, cfg) -> tuple:
        """(the model used for inference after training, summary fields about it)."""
        return model, {}

    def merge(self, model):
        """The model with its update merged into the base weights (``mergeable`` methods only)."""
        raise NotImplementedError

    # -- a study ---------------------------------------------------------------------------------
    # ``study`` is the study section as one arm sees it (lora_study.study.arms.arm_view): the arm's own ranks, dims,
    # alpha_rule and alpha in place of the study's; the planner renames the variants' arm after the study's arm
    def variants(self, study) -> List[Variant]:
        """The members this method contributes to a study, per seed."""
        return [Variant(self.name)]

    def search_variants(self, study) -> List[Variant]:
        """The members its learning-rate search trains (on validation) for each rate of its grid."""
        return [Variant(self.name)]

    def label(self, record: Dict[str, Any]) -> str:
        """A member's name in tables and figures, from its study-index record (its arm's title when it has one)."""
        return record.get("title") or self.title

    # -- its placement in the artifacts (lora_study.artifacts.PLACEMENT) ---------------------------
    @property
    def family_name(self) -> str:
        return self.family or self.name

    @property
    def role(self) -> str:
        return BASELINE if self.is_baseline else REFERENCE if self.is_reference else TREATMENT

    def variant_name(self, record: Dict[str, Any]) -> Optional[str]:
        """A member's variant within its arm (subspace training: DID or SAID), or None."""
        return None

    def placement(self, record: Dict[str, Any], arm: str, title: Optional[str], order: int = 0) -> Dict[str, Any]:
        """The placement of a member of this method (``record``: its study-index fields: rank, d, said, ...) in arm
        ``arm`` whose title is ``title`` (None: the method's own)."""
        title = title or self.title
        value = record.get("value", record.get(self.axis) if self.axis else None)
        variant = self.variant_name(record)
        # the baseline and reference roles belong to the method's own arm; a declared arm of full FT in another
        # setting (lora_study.study.arms) is a treatment that other arms name as their reference
        role = self.role if arm == self.name else TREATMENT
        return {"family": self.family_name, "method": self.name, "arm": arm, "title": title,
                "label": label_of(title, self.axis, value, variant), "axis": self.axis,
                "value": None if value is None else int(value), "role": role, "variant": variant,
                "order": int(order)}


def set_trainable(model: torch.nn.Module, head: List[str], on: bool) -> None:
    for h in head:
        for p in getattr(model, h).parameters():
            p.requires_grad_(on)


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Recompute each block's activations in the backward pass (non-reentrant, so frozen inputs are fine)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise ConfigError(f"train.gradient_checkpointing=true is not supported by {type(base).__name__}; set it to false.")
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def analysed_modules(model: torch.nn.Module) -> List[str]:
    return list(block_linears(model))


def pretrained_weights(model, names: List[str]) -> Dict[str, torch.Tensor]:
    """Copies of W_pre (fp32, CPU) of the named modules, taken before training."""
    return {n: base_module(model, n).weight.detach().float().cpu().clone() for n in names}


