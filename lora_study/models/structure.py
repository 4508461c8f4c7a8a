"""The parts of a transformer that the suite names: the role of each linear module inside a block (query, key,
value, attention output, FFN in / gate / out), its layer index, and the module under any peft or subspace
wrapper. Encoder (BERT, RoBERTa) and decoder (Llama, Qwen) names are both understood."""
from __future__ import annotations

import re
from typing import Dict, List, Optional

import torch

from ..schema import ConfigError

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
# named selections of block linears (LoRA targets, intervention scopes)
PRESETS = {
    "attn_qv": ("query", "value"),
    "attn": ("query", "key", "value", "attn_out"),
    "all_linear": ("query", "key", "value", "attn_out", "ffn_in", "ffn_gate", "ffn_out"),
}


def module_kind(name: str) -> Optional[str]:
    """The role of a linear module inside a transformer block, or None for anything else."""
    for pattern, kind in _KINDS:
        if re.search(pattern, name):
            return kind
    return None


def module_layer(name: str) -> Optional[int]:
    m = re.search(r"\.(?:layer|layers|h|blocks)\.(\d+)\.", name)
    return int(m.group(1)) if m else None


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
