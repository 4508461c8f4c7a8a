"""Finetuning methods: the frozen base (head only), full finetuning, LoRA through peft, QLoRA (LoRA on
a 4-bit NF4 base, CUDA only) and subspace training. ``apply_method`` returns the model to train and the
names of the analysed 2-D weights.

LoRA (Hu et al. 2021), as peft implements it: h = W0 x + (α/r) B A x with B ∈ R^{d_out×r} zero at
start and A ∈ R^{r×d_in}; rsLoRA scales by α/√r. Trainable parameters per adapted matrix: r(d_in + d_out).
QLoRA (Dettmers et al. 2023): the same with W0 stored as NF4 and dequantised to bf16 in each forward;
ΔW = (α/r) B A as for LoRA (W_pre for the analyses is then the unquantised checkpoint).
Causal LMs have no task head: their LM head is part of the pretrained model and stays frozen under LoRA.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List

import torch

from .artifacts import module_kind
from .config import ConfigError, MethodConfig

PRESETS = {
    "attn_qv": ("query", "value"),
    "attn": ("query", "key", "value", "attn_out"),
    "all_linear": ("query", "key", "value", "attn_out", "ffn_in", "ffn_gate", "ffn_out"),
}
PEFT_INIT = {"default": True, "gaussian": "gaussian", "pissa": "pissa", "olora": "olora", "random_b": False}


@dataclass
class Prepared:
    model: torch.nn.Module
    analysed: List[str]  # module paths (in the base model's namespace) whose ΔW is saved and analysed
    targets: List[str] = field(default_factory=list)  # LoRA-adapted module paths
    head: List[str] = field(default_factory=list)


def block_linears(model: torch.nn.Module) -> Dict[str, torch.nn.Linear]:
    """The linear layers inside the transformer blocks (attention and FFN), by module path."""
    return {n: m for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and module_kind(n) is not None}


def resolve_targets(model: torch.nn.Module, target_modules) -> List[str]:
    """Module paths a preset name or a list of module names selects; one clear error if none match."""
    linears = block_linears(model)
    if isinstance(target_modules, str):
        if target_modules not in PRESETS:
            raise ConfigError(f"method.target_modules={target_modules!r} is not a preset; choose one of "
                              f"{', '.join(PRESETS)} or give a list of module names.")
        kinds = PRESETS[target_modules]
        return [n for n in linears if module_kind(n) in kinds]
    wanted = [str(t) for t in target_modules]
    chosen = []
    for t in wanted:
        hits = [n for n in linears if n == t or n.endswith("." + t)]
        if not hits:
            suffixes = sorted({".".join(n.split(".")[-2:]) if n.split(".")[-1] == "dense" else n.split(".")[-1]
                               for n in linears})
            raise ConfigError(f"target module {t!r} matches no linear layer of the model; it has {', '.join(suffixes)}.")
        chosen += hits
    return sorted(set(chosen), key=list(linears).index)


def _set_head_trainable(model: torch.nn.Module, head: List[str], on: bool) -> None:
    for h in head:
        for p in getattr(model, h).parameters():
            p.requires_grad_(on)


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Recompute each block's activations in the backward pass (non-reentrant, so frozen inputs are fine)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise ConfigError(f"train.gradient_checkpointing=true is not supported by {type(base).__name__}; set it to false.")
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def apply_method(model: torch.nn.Module, cfg: MethodConfig, head: List[str],
                 gradient_checkpointing: bool = False) -> Prepared:
    """Freeze / wrap ``model`` for the method; ``gradient_checkpointing`` applies to full, lora and qlora."""
    analysed = list(block_linears(model))
    if cfg.name == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        if gradient_checkpointing:
            enable_gradient_checkpointing(model)
        return Prepared(model, analysed, head=head)
    if cfg.name == "none":
        for p in model.parameters():
            p.requires_grad_(False)
        _set_head_trainable(model, head, cfg.train_head)
        return Prepared(model, analysed, head=head)
    if cfg.name == "lora":
        prepared = _apply_lora(model, cfg, head, analysed)
        if gradient_checkpointing:
            enable_gradient_checkpointing(prepared.model)
        return prepared
    if cfg.name == "qlora":
        from peft import prepare_model_for_kbit_training
        # casts norms to fp32 and freezes the quantised base; checkpointing here if asked
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
        return _apply_lora(model, cfg, head, analysed)
    if cfg.name == "subspace":
        from .subspace import SubspaceModel
        sub = SubspaceModel(model, d=int(cfg.d), projection=cfg.projection, said=bool(cfg.said),
                            exclude_embeddings=bool(cfg.exclude_embeddings), direct_trainable=tuple(head))
        return Prepared(sub, analysed, head=head)
    raise ConfigError(f"method.name={cfg.name!r} is not valid.")


def _apply_lora(model, cfg: MethodConfig, head: List[str], analysed: List[str]) -> Prepared:
    from peft import LoraConfig, get_peft_model

    targets = resolve_targets(model, cfg.target_modules)
    linears = block_linears(model)
    smallest = min(min(linears[t].in_features, linears[t].out_features) for t in targets)
    if cfg.rank > smallest:
        raise ConfigError(f"method.rank={cfg.rank} is larger than the smallest adapted dimension ({smallest}); "
                          f"choose a rank between 1 and {smallest}.")
    lcfg = LoraConfig(r=int(cfg.rank), lora_alpha=float(cfg.alpha), lora_dropout=float(cfg.dropout),
                      target_modules=targets, use_rslora=bool(cfg.use_rslora), use_dora=bool(cfg.use_dora),
                      init_lora_weights=PEFT_INIT[cfg.init],
                      modules_to_save=list(head) if cfg.train_head and head else None)
    peft_model = get_peft_model(model, lcfg)
    return Prepared(peft_model, analysed, targets=targets, head=head)


def lora_layers(model) -> Dict[str, torch.nn.Module]:
    """peft LoRA layers by module path in the base model's namespace."""
    from peft.tuners.lora import LoraLayer
    prefix = "base_model.model."
    return {n[len(prefix):] if n.startswith(prefix) else n: m
            for n, m in model.named_modules() if isinstance(m, LoraLayer)}


def base_module(model, name: str) -> torch.nn.Module:
    """The module at ``name`` in the base model, seen through any peft / subspace wrapper."""
    root = model
    if hasattr(root, "get_base_model"):
        root = root.get_base_model()
    mod = root.get_submodule(name)
    return getattr(mod, "base_layer", mod)


@torch.no_grad()
def lora_deltas(model) -> Dict[str, torch.Tensor]:
    """ΔW exactly as peft merges it: the scaled B·A (``get_delta_weight``); for DoRA, merged − W0."""
    out = {}
    for name, layer in lora_layers(model).items():
        adapter = layer.active_adapters[0]
        if layer.use_dora.get(adapter, False):
            w0 = layer.get_base_layer().weight.detach().clone()
            layer.merge(adapter_names=[adapter])
            out[name] = (layer.get_base_layer().weight - w0).float().cpu()
            layer.unmerge()
            layer.get_base_layer().weight.copy_(w0)
        else:
            out[name] = layer.get_delta_weight(adapter).float().cpu()
    return out


def trainable_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def expected_lora_count(model_before: Dict[str, tuple], targets: List[str], rank: int, head_params: int) -> int:
    """r·(d_in + d_out) per adapted matrix plus the head, from the (out, in) shapes of the targets."""
    return sum(rank * (shape[0] + shape[1]) for n, shape in model_before.items() if n in targets) + head_params
