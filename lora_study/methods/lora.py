"""LoRA (Hu et al. 2021) through peft, and QLoRA (Dettmers et al. 2023): LoRA on a 4-bit NF4 base, CUDA only.

    h = W0 x + (α/r) B A x,   B ∈ R^{d_out×r} zero at start, A ∈ R^{r×d_in};   rsLoRA scales by α/√r.

Trainable parameters per adapted matrix: r(d_in + d_out). ΔW = W_finetuned − W_pre of every adapted matrix, with
W_pre copied before peft wraps the model: the scaled B·A that peft merges (``get_delta_weight``) when the base
weight is still W_pre, and W_res + s·B·A − W_pre for the initialisations that move principal components out of
W0 into the adapter (PiSSA, OLoRA: there s·B·A alone would not be the update); merged − W_pre for DoRA. QLoRA
dequantises W0 to bf16 in each forward; its ΔW is s·B·A (W_pre for the analyses is the unquantised checkpoint). A causal LM's own LM head
is part of the pretrained model and stays frozen; a classifier's head trains through ``modules_to_save``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import torch

from ..accounting import dir_bytes
from ..models.structure import PRESETS, block_linears, lora_params_per_rank, matched_rank, resolve_targets
from ..schema import FRACTION, POSITIVE, POSITIVE_INT, Choice, ConfigError, Free, Maybe, Rule, opt
from . import register
from .base import Method, MethodConfig, Prepared, Variant, analysed_modules, enable_gradient_checkpointing

PEFT_INIT = {"default": True, "gaussian": "gaussian", "pissa": "pissa", "olora": "olora"}
ALPHA_RULES = ("two_r", "fixed", "rslora")


@dataclass(frozen=True)
class Targets(Rule):
    """A preset name (attn_qv, attn, mlp, all_linear) or a non-empty list of module names."""

    def ok(self, value: Any) -> bool:
        if isinstance(value, str):
            return value in PRESETS
        return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(v, str) and v for v in value)

    def what(self) -> str:
        return f"one of the presets {', '.join(PRESETS)} or a list of module names"


@dataclass
class LoraConfig(MethodConfig):
    rank: int = opt(8, POSITIVE_INT)
    alpha: float = opt(16.0, POSITIVE)
    dropout: float = opt(0.0, FRACTION)
    target_modules: Any = opt("attn_qv", Targets())  # preset (attn_qv | attn | mlp | all_linear) or module names
    # matched trainable parameters: adapt target_modules at the rank whose count is closest to LoRA at `rank` on
    # these targets (a preset or module names); the member keeps `rank` as its swept value, the summary the rank used
    match_params: Any = opt(None, Maybe(Targets()))
    use_rslora: bool = opt(False, Free())
    use_dora: bool = opt(False, Free())
    init: str = opt("default", Choice(tuple(PEFT_INIT)))  # default | gaussian | pissa | olora


@dataclass
class QLoraConfig(LoraConfig):
    pass


def lora_layers(model) -> Dict[str, torch.nn.Module]:
    """peft LoRA layers by module path in the base model's namespace."""
    from peft.tuners.lora import LoraLayer
    prefix = "base_model.model."
    return {n[len(prefix):] if n.startswith(prefix) else n: m
            for n, m in model.named_modules() if isinstance(m, LoraLayer)}


@torch.no_grad()
def lora_deltas(model, w_pre: Optional[Dict[str, torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
    """ΔW of every adapted matrix. Without ``w_pre``: exactly what peft merges, the scaled B·A
    (``get_delta_weight``), or merged − W0 for DoRA. With ``w_pre`` (W_pre copied before wrapping): W_ft − W_pre,
    which is the same s·B·A (bit for bit) while the base weight is still W_pre, and W_res + s·B·A − W_pre when the
    initialisation moved part of W0 into the adapter (PiSSA, OLoRA)."""
    out = {}
    for name, layer in lora_layers(model).items():
        adapter = layer.active_adapters[0]
        base = layer.get_base_layer().weight
        w0 = base.detach().float().cpu() if w_pre is None else w_pre[name]
        if layer.use_dora.get(adapter, False):
            kept = base.detach().clone()
            layer.merge(adapter_names=[adapter])
            out[name] = base.detach().float().cpu() - w0
            layer.unmerge()
            base.copy_(kept)
            continue
        delta = layer.get_delta_weight(adapter).float().cpu()
        current = base.detach().float().cpu()
        out[name] = delta if torch.equal(current, w0) else (current + delta) - w0
    return out


def alpha_for(rank: int, study) -> float:
    """LoRA's α for a rank: α = 2r (Biderman et al.'s recipe), a fixed α, or a fixed α with rsLoRA's α/√r."""
    return 2.0 * rank if study.alpha_rule == "two_r" else float(study.alpha)


class Lora(Method):
    name = "lora"
    title = "LoRA"
    family = "lora"
    schema = LoraConfig
    axis = "rank"
    mergeable = True
    has_adapter_factors = True

    def prepare(self, model: torch.nn.Module, cfg, head: List[str], gradient_checkpointing: bool = False) -> Prepared:
        prepared = self._wrap(model, cfg, head)
        if gradient_checkpointing:
            enable_gradient_checkpointing(prepared.model)
        return prepared

    def _wrap(self, model: torch.nn.Module, cfg, head: List[str]) -> Prepared:
        from peft import LoraConfig as PeftLoraConfig, get_peft_model
        analysed = analysed_modules(model)
        targets = resolve_targets(model, cfg.target_modules)
        linears = block_linears(model)
        smallest = min(min(linears[t].in_features, linears[t].out_features) for t in targets)
        rank, info = int(cfg.rank), {}
        if getattr(cfg, "match_params", None) is not None:
            rank = matched_rank(model, cfg.target_modules, cfg.match_params, int(cfg.rank))
            info = {"matched_params": {
                "reference": cfg.match_params if isinstance(cfg.match_params, str) else list(cfg.match_params),
                "reference_rank": int(cfg.rank), "rank": rank,
                "reference_count": int(cfg.rank) * lora_params_per_rank(model, cfg.match_params),
                "count": rank * lora_params_per_rank(model, cfg.target_modules)}}
        elif cfg.rank > smallest:
            raise ConfigError(f"method.rank={cfg.rank} is larger than the smallest adapted dimension ({smallest}); "
                              f"choose a rank between 1 and {smallest}.")
        lcfg = PeftLoraConfig(r=rank, lora_alpha=float(cfg.alpha), lora_dropout=float(cfg.dropout),
                              target_modules=targets, use_rslora=bool(cfg.use_rslora), use_dora=bool(cfg.use_dora),
                              init_lora_weights=PEFT_INIT[cfg.init],
                              modules_to_save=list(head) if cfg.train_head and head else None)
        return Prepared(get_peft_model(model, lcfg), analysed, targets=targets, head=head, info=info)

    def pretrained_scope(self, model: torch.nn.Module, cfg) -> List[str]:
        return resolve_targets(model, cfg.target_modules)

    def summary(self, cfg) -> Dict[str, Any]:
        return {"rank": int(cfg.rank), "d": None}

    def deltas(self, prepared: Prepared, model, w_pre: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        return lora_deltas(model, w_pre)

    def storage(self, model, out, run_cfg, saved: Dict[str, bool]) -> Dict[str, Any]:
        model.save_pretrained(out.adapter_dir())
        saved["adapter"] = True
        return {"bytes": dir_bytes(out.adapter_dir()), "basis": "adapter directory (peft format)"}

    def merge(self, model):
        # merge_and_unload leaves the original architecture (no adapter wrappers), as a deployed model is
        return model.merge_and_unload()

    def _variant(self, rank: int, study) -> Variant:
        alpha = alpha_for(rank, study)
        rs = ["method.use_rslora=true"] if study.alpha_rule == "rslora" else []
        return Variant(self.name, rank, [f"method.rank={rank}", f"method.alpha={alpha:g}"] + rs,
                       {"rank": rank, "alpha": alpha})

    def variants(self, study) -> List[Variant]:
        return [self._variant(int(r), study) for r in study.ranks]

    def search_variants(self, study) -> List[Variant]:
        return [self._variant(int(r), study) for r in study.lr_search_ranks]

    def label(self, record: Dict[str, Any]) -> str:
        """"LoRA r=8"; an arm with a title of its own: "LoRA (all linear) r=16"."""
        return f"{record.get('title') or self.title} r={record.get('rank')}"


class QLora(Lora):
    name = "qlora"
    title = "QLoRA"
    schema = QLoraConfig
    config_file = True  # conf/method/qlora.yaml: rank 16 on every linear layer
    base_tag = "nf4"

    def check_device(self, cfg, device: torch.device) -> None:
        if device.type != "cuda":
            raise ConfigError(f"method=qlora needs a CUDA GPU for its 4-bit NF4 base (bitsandbytes), but this run's "
                              f"device is {device.type}; use method=lora here.")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as e:
            raise ConfigError("method=qlora needs the package bitsandbytes; install it with "
                              "`pip install bitsandbytes` on the CUDA machine.") from e

    def load_options(self, cfg, device: torch.device) -> Dict[str, Any]:
        return {"quantize_4bit": True, "device": device}

    def prepare(self, model: torch.nn.Module, cfg, head: List[str], gradient_checkpointing: bool = False) -> Prepared:
        from peft import prepare_model_for_kbit_training
        # casts norms to fp32 and freezes the quantised base; checkpointing here if asked
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
        return self._wrap(model, cfg, head)

    def to_device(self, prepared: Prepared, device: torch.device) -> torch.nn.Module:
        return prepared.model  # a 4-bit model is loaded onto its device

    def pretrained_scope(self, model: torch.nn.Module, cfg) -> List[str]:
        return []  # the 4-bit base is not W_pre; the analyses read W_pre from the checkpoint

    def deltas(self, prepared: Prepared, model, w_pre: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        return lora_deltas(model)


register(Lora())
register(QLora())
