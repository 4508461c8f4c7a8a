"""The two reference points of every study: the frozen pretrained model, of which only the task head trains
(what finetuning gains are measured from), and full finetuning, where every parameter trains (what the
parameter-efficient methods are compared with). Full finetuning's ΔW is W_finetuned − W_pre of every
linear layer in the transformer blocks, with W_pre copied before training.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

import torch

from ..accounting import dir_bytes, tensor_bytes
from ..models.structure import base_module
from . import register
from .base import Method, MethodConfig, Prepared, analysed_modules, enable_gradient_checkpointing, set_trainable


@dataclass
class FrozenConfig(MethodConfig):
    pass


@dataclass
class FullConfig(MethodConfig):
    pass


class Frozen(Method):
    name = "none"
    title = "frozen base"
    schema = FrozenConfig
    is_baseline = True

    def prepare(self, model: torch.nn.Module, cfg, head: List[str], gradient_checkpointing: bool = False) -> Prepared:
        for p in model.parameters():
            p.requires_grad_(False)
        set_trainable(model, head, cfg.train_head)
        return Prepared(model, analysed_modules(model), head=head)


class Full(Method):
    name = "full"
    title = "full FT"
    schema = FullConfig
    is_reference = True
    truncates = True
    distributed = "fsdp"  # every weight trains: 16 bytes per parameter before activations, sharded over devices

    def pretrained_scope(self, model: torch.nn.Module, cfg) -> List[str]:
        return analysed_modules(model)

    def prepare(self, model: torch.nn.Module, cfg, head: List[str], gradient_checkpointing: bool = False) -> Prepared:
        for p in model.parameters():
            p.requires_grad_(True)
        if gradient_checkpointing:
            enable_gradient_checkpointing(model)
        return Prepared(model, analysed_modules(model), head=head)

    def deltas(self, prepared: Prepared, model, w_pre: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        return {n: base_module(model, n).weight.detach().float().cpu() - w for n, w in w_pre.items()}

    def storage(self, model, out, run_cfg, saved: Dict[str, bool]) -> Dict:
        """A full copy of the model per task: saved when ``run.save_model``, else counted from its state."""
        if run_cfg.save_model:
            model.save_pretrained(out.model_dir())
            saved["model"] = True
            return {"bytes": dir_bytes(out.model_dir()), "basis": "saved model directory"}
        return {"bytes": sum(tensor_bytes(t) for t in model.state_dict().values()),
                "basis": "model state dict (fp32), the size of a full copy"}


register(Frozen())
register(Full())
