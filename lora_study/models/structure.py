"""The parts of a transformer that the suite names: the role of each linear module inside a block (query, key,
value, attention output, FFN in / gate / out), its layer index, and the module under any peft or subspace
wrapper. Encoder (BERT, RoBERTa) and decoder (Llama, Qwen) names are both understood."""
from __future__ import annotations

import re
from typing import Dict, List

import torch

from ..schema import ConfigError

from ..artifacts import MODULE_KINDS, TARGET_PRESETS, module_kind, module_layer  # noqa: F401 - the names ΔW files are keyed by

# named selections of block linears (LoRA targets, intervention scopes)
PRESETS = TARGET_PRESETS  # where LoRA goes: lora_study.artifacts holds the kinds of each preset


def block_linears(model: torch.nn.Module) -> Dict[str, torch.nn.Linear]:
    """The linear layers inside the transformer blocks (attention and FFN), by module path."""
    return {n: m for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and module_kind(n) is not None}


_BLOCK = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.\d+$")


def transformer_blocks(model: torch.nn.Module) -> List[torch.nn.Module]:
    """The transformer blocks (``bert.encoder.layer.3``, ``model.layers.3``), in order: the units FSDP shards."""
    return [m for n, m in model.named_modules() if _BLOCK.search(n) and block_linears(m)]


def base_module(model, name: str) -> torch.nn.Module:
    """The module at ``name`` in the base model, seen through any peft / subspace wrapper."""
    root = model
    if hasattr(root, "get_base_model"):
        root = root.get_base_model()
    mod = root.get_submodule(name)
    return getattr(mod, "base_layer", mod)


def resolve_targets(model: torch.nn.Module, target_modules) -> List[str]:
    """Module paths a preset name or a list of module names selects; one clear error if none match."""
    linears = block_linears(model)
    if isinstance(target_modules, str):
        if target_modules not in PRESETS:
            raise ConfigError(f"method.target_modules={target_modules!r} is not a preset; choose one of "
                              f"{', '.join(PRESETS)} or give a list of module names.")
        kinds = PRESETS[target_modules]
        return [n for n in linears if module_kind(n) in kinds]
    chosen = []
    for t in [str(t) for t in target_modules]:
        hits = [n for n in linears if n == t or n.endswith("." + t)]
        if not hits:
            suffixes = sorted({".".join(n.split(".")[-2:]) if n.split(".")[-1] == "dense" else n.split(".")[-1]
                               for n in linears})
            raise ConfigError(f"target module {t!r} matches no linear layer of the model; it has {', '.join(suffixes)}.")
        chosen += hits
    return sorted(set(chosen), key=list(linears).index)


def lora_params_per_rank(model: torch.nn.Module, target_modules) -> int:
    """LoRA's trainable parameters per unit of rank on the selected matrices: the sum of d_in + d_out."""
    linears = block_linears(model)
    return sum(linears[t].in_features + linears[t].out_features for t in resolve_targets(model, target_modules))


def matched_rank(model: torch.nn.Module, target_modules, reference, rank: int) -> int:
    """The rank on ``target_modules`` whose LoRA trainable count is closest to LoRA at ``rank`` on ``reference``
    (ties to the lower rank), at least 1 and at most the smallest adapted dimension."""
    linears = block_linears(model)
    targets = resolve_targets(model, target_modules)
    per, goal = lora_params_per_rank(model, target_modules), rank * lora_params_per_rank(model, reference)
    top = min(min(linears[t].in_features, linears[t].out_features) for t in targets)
    low = max(1, min(top, goal // per))
    high = min(top, low + 1)
    return low if abs(low * per - goal) <= abs(high * per - goal) else high
