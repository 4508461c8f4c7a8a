"""Intrinsic-dimension finetuning (method ``subspace``): train a random d-dimensional subspace of the weights.

DID (Li et al. 2018; Aghajanyan et al. 2020):   θ = θ0 + P θ_d,            θ_d ∈ R^d, θ_d = 0 at step 0.
SAID (Aghajanyan et al. 2020):                  θ_i = θ0_i + λ_ℓ(i) (P θ_{d−m})_i,  one λ_ℓ per layer ℓ.

θ0 are the frozen weights of a transformers model, P a fixed random projection R^d -> R^D with unit-norm
columns (see ``lora_study.methods.projections``), D the number of weights in scope. The classification head is
trained directly and counted apart, as both papers do. Each forward computes P θ_d once as one flat
vector, splits it into views shaped like the weights, and runs the wrapped model on θ0 + Δ through
``torch.func.functional_call``; memory beyond the model is O(d + D) for the Fastfood and sparse P.

SAID's λ start at 1, as in the public FastfoodWrap implementations of SAID: with θ_d = 0 and λ = 0 the update λ P θ_d would
have zero gradient with respect to both, so training could never start; with λ = 1, step 0 is exactly
DID and λ receives gradient as soon as θ_d ≠ 0.
"""
from __future__ import annotations

import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import torch
from torch import nn
from torch.func import functional_call

from ..schema import POSITIVE, POSITIVE_INT, Choice, ConfigError, Free, opt
from . import register
from .base import Method, MethodConfig, Prepared, Variant, analysed_modules
from .projections import ProjectionTooLarge, make_projection

EMBEDDING_MARKERS = ("embeddings", "embed_tokens")
PROJECTIONS = ("fastfood", "dense", "sparse")
_BLOCK = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.\d+(?=\.)")
OUTSIDE_BLOCKS = "<outside blocks>"
# Methods of the wrapped model that would silently run θ0 and ignore the subspace update.
_BASE_ONLY = ("generate", "save_pretrained", "push_to_hub")


def layer_group(name: str) -> str:
    """The transformer block a parameter belongs to ('bert.encoder.layer.3'), or OUTSIDE_BLOCKS."""
    match = _BLOCK.search(name)
    return name[: match.end()] if match else OUTSIDE_BLOCKS


def _checkpointing(model: nn.Module) -> bool:
    for attr in ("is_activation_checkpointing", "is_gradient_checkpointing"):  # transformers 5, then 4
        if hasattr(type(model), attr):
            return bool(getattr(model, attr))
    return False


class SubspaceModel(nn.Module):
    """Wrap ``model`` so that its weights in scope move only inside a random d-dimensional subspace.

    Scope: every parameter except those whose name contains a ``direct_trainable`` substring (trained
    directly) and, with ``exclude_embeddings``, those containing 'embeddings' or 'embed_tokens' (frozen).
    ``said=True`` spends m of the d numbers on one scale per layer group (``said_groups='block'``: the
    transformer block index in the name plus one group for everything outside blocks; 'tensor': one
    per weight tensor, as in the widely copied FastfoodWrap implementation), leaving d − m for θ_{d−m}.
    ``max_bytes`` bounds the dense and sparse matrices (default: a quarter of the device's free memory).
    """

    def __init__(
        self,
        model: nn.Module,
        d: int,
        projection: str = "fastfood",
        said: bool = False,
        exclude_embeddings: bool = False,
        direct_trainable: Iterable[str] = ("classifier",),
        seed: int = 0,
        *,
        said_groups: str = "block",
        max_bytes: int | None = None,
    ):
        super().__init__()
        if projection not in PROJECTIONS:
            raise ValueError(f"Unknown projection {projection!r}; valid: {', '.join(PROJECTIONS)}.")
        if said_groups not in ("block", "tensor"):
            raise ValueError(f"Unknown said_groups {said_groups!r}; valid: 'block', 'tensor'.")
        direct_trainable = (direct_trainable,) if isinstance(direct_trainable, str) else tuple(direct_trainable)
        self.model = model
        self.said, self.projection_kind, self.seed = bool(said), projection, seed
        self._merged = False
        self._requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}

        scoped, direct = [], []
        for name, p in model.named_parameters():  # tied weights appear once, under their first name
            if any(s in name for s in direct_trainable):
                direct.append((name, p))
            elif not (exclude_embeddings and any(s in name for s in EMBEDDING_MARKERS)):
                scoped.append((name, p))
        for pattern in direct_trainable:
            if not any(pattern in name for name, _ in direct):
                warnings.warn(f"direct_trainable pattern {pattern!r} matches no parameter of {type(model).__name__}.")
        if not scoped:
            raise ValueError("No parameter is left in the subspace scope; check direct_trainable and exclude_embeddings.")
        if len({(p.device, p.dtype) for _, p in scoped}) > 1:
            raise ValueError("All parameters in scope must share one device and dtype; cast the model first.")
        self._names = [name for name, _ in scoped]
        self._params = [p for _, p in scoped]
        self._numels = [p.numel() for p in self._params]
        self._direct = direct
        keys = [layer_group(n) if said_groups == "block" else n for n in self._names]
        self.group_names = list(dict.fromkeys(keys))
        m = len(self.group_names) if self.said else 0
        if int(d) <= m:
            raise ValueError(f"d={d} must exceed the number of SAID scales m={m} (d - m dims are projected).")
        self.d = int(d)
        device = self._params[0].device
        self.projection = make_projection(projection, self.D, self.d - m, seed=seed, max_bytes=max_bytes, device=device)
        self.theta_d = nn.Parameter(torch.zeros(self.d - m, device=device))
        if self.said:
            self.lambdas = nn.Parameter(torch.ones(m, device=device))
            index = {key: i for i, key in enumerate(self.group_names)}
            self.register_buffer("_group_of", torch.tensor([index[k] for k in keys], device=device), persistent=False)
        for p in model.parameters():  # only now, so a refused construction leaves the model untouched
            p.requires_grad_(False)
        for _, p in direct:
            p.requires_grad_(True)

    # ---- sizes and parameters -------------------------------------------------------------------
    @property
    def D(self) -> int:
        """Number of weights in scope (the ambient dimension of the projection)."""
        return sum(self._numels)

    @property
    def num_subspace_params(self) -> int:
        """d: the trainable numbers of the subspace, SAID scales included."""
        return self.d

    @property
    def num_direct_params(self) -> int:
        """Weights trained directly (the head), counted apart as in Li et al. and Aghajanyan et al."""
        return sum(p.numel() for _, p in self._direct)

    @property
    def scoped_names(self) -> list[str]:
        return list(self._names)

    @property
    def direct_parameters(self) -> list[nn.Parameter]:
        """The parameters trained directly, outside the subspace (the head)."""
        return [p for _, p in self._direct]

    def trainable_parameters(self) -> list[nn.Parameter]:
        """θ_d, the SAID scales λ if any, then the directly trained parameters."""
        own = [self.theta_d] + ([self.lambdas] if self.said else [])
        return own + [p for _, p in self._direct]

    @property
    def _weight_dtype(self) -> torch.dtype:
        return self._params[0].dtype

    @property
    def config(self):
        return self.model.config

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            model = self.__dict__.get("_modules", {}).get("model")
            if model is None or name.startswith("__"):
                raise
            if name in _BASE_ONLY:
                raise AttributeError(
                    f"SubspaceModel.{name} would ignore the subspace update; call merge_into_base() and use "
                    f"the returned model's {name} instead."
                ) from None
            return getattr(model, name)

    # ---- the update -----------------------------------------------------------------------------
    def _split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Views of the flat (D,) vector shaped like the weights in scope (no copies)."""
        return [c.view(p.shape) for c, p in zip(torch.split(flat, self._numels), self._params)]

    def _scales(self, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """λ_ℓ(i) for every weight in scope, as 0-dim tensors (SAID only)."""
        return self.lambdas.to(dtype)[self._group_of].unbind(0)

    def _effective_parameters(self) -> dict[str, torch.Tensor]:
        """θ0_i + (λ_ℓ(i)) (P θ_d)_i for every weight in scope, in the weights' dtype."""
        dtype = self._weight_dtype
        pieces = self._split(self.projection(self.theta_d).to(dtype))  # one flat P θ_d per forward
        if not self.said:
            return {n: p + c for n, p, c in zip(self._names, self._params, pieces)}
        return {n: torch.addcmul(p, c, s) for n, p, c, s in zip(self._names, self._params, pieces, self._scales(dtype))}

    def forward(self, *args, **kwargs):
        """Run the wrapped model with θ0 + Δ in place of the weights in scope."""
        if self._merged:
            raise RuntimeError("This SubspaceModel was merged into its base model; use the model merge_into_base() returned.")
        if self.training and _checkpointing(self.model):
            # Checkpointing recomputes blocks during backward, after functional_call has put θ0 back.
            raise RuntimeError("SubspaceModel cannot train with gradient checkpointing; disable it on the wrapped model.")
        return functional_call(self.model, self._effective_parameters(), args, kwargs)

    @torch.no_grad()
    def deltas(self, names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        """ΔW = θ − θ0 (float32, detached) for the 2-D weights in scope, or for ``names`` among them."""
        pieces = self._split(self.projection(self.theta_d).float())
        if self.said:
            pieces = [c * s for c, s in zip(pieces, self._scales(torch.float32))]
        matrices = {n: c for n, c, p in zip(self._names, pieces, self._params) if p.dim() == 2}
        if names is None:
            return {n: c.clone() for n, c in matrices.items()}
        names = list(names)
        unknown = [n for n in names if n not in matrices]
        if unknown:
            raise ValueError(f"No 2-D weight in the subspace scope is named {unknown[0]!r}; valid names: {sorted(matrices)}.")
        return {n: matrices[n].clone() for n in names}

    @torch.no_grad()
    def merged_state_dict(self) -> dict[str, torch.Tensor]:
        """The wrapped model's state_dict with every weight in scope replaced by θ0 + Δ (tied names too)."""
        merged = {id(p): t.detach() for p, t in zip(self._params, self._effective_parameters().values())}
        state = self.model.state_dict()
        for name, p in self.model.named_parameters(remove_duplicate=False):
            if id(p) in merged:
                state[name] = merged[id(p)]
        return state

    @torch.no_grad()
    def merge_into_base(self) -> nn.Module:
        """Write θ0 + Δ into the wrapped model's weights, restore their requires_grad, return the model.

        Afterwards this wrapper refuses to run (its θ0 is gone); the returned model is a plain model.
        """
        if self._merged:
            raise RuntimeError("merge_into_base() was already called on this SubspaceModel.")
        for p, t in zip(self._params, self._effective_parameters().values()):
            p.copy_(t)
        for name, p in self.model.named_parameters():
            p.requires_grad_(self._requires_grad[name])
        self._merged = True
        return self.model

    def extra_repr(self) -> str:
        said = f", said=True, m={len(self.group_names)}" if self.said else ""
        return f"d={self.d}, D={self.D}, projection={self.projection_kind!r}{said}, direct={self.num_direct_params}"


# -- the method -----------------------------------------------------------------------------------

@dataclass
class SubspaceConfig(MethodConfig):
    d: int = opt(1000, POSITIVE_INT)
    projection: str = opt("fastfood", Choice(PROJECTIONS))
    said: bool = opt(False, Free())
    exclude_embeddings: bool = opt(False, Free())
    head_lr: Optional[float] = opt(None, POSITIVE)  # learning rate of the directly trained head (null: optim.lr)


def scope_size(model: nn.Module, head: List[str], exclude_embeddings: bool) -> int:
    """D: the number of weights a SubspaceModel would put in scope (all but the head and, optionally, embeddings)."""
    return sum(p.numel() for n, p in model.named_parameters()
               if not any(h in n for h in head) and not (exclude_embeddings and any(s in n for s in EMBEDDING_MARKERS)))


class Subspace(Method):
    name = "subspace"
    title = "subspace"
    schema = SubspaceConfig
    axis = "d"
    probes_during_training = False  # θ0 stays in the modules until merged, so probes run at the end only

    def prepare(self, model: nn.Module, cfg, head: List[str], gradient_checkpointing: bool = False) -> Prepared:
        D = scope_size(model, head, bool(cfg.exclude_embeddings))
        if int(cfg.d) > D:
            raise ConfigError(f"method.d={cfg.d} is larger than D={D:,}, the number of weights in the subspace's "
                              f"scope; choose d between 1 and {D:,}.")
        analysed = analysed_modules(model)
        try:
            sub = SubspaceModel(model, d=int(cfg.d), projection=cfg.projection, said=bool(cfg.said),
                                exclude_embeddings=bool(cfg.exclude_embeddings), direct_trainable=tuple(head))
        except ProjectionTooLarge as e:
            raise ConfigError(f"method.d={cfg.d} with method.projection={cfg.projection} is too large: {e}") from e
        return Prepared(sub, analysed, head=head)

    def group_lrs(self, model, cfg) -> Optional[Dict[int, float]]:
        return {id(p): float(cfg.head_lr) for p in model.direct_parameters} if cfg.head_lr else None

    def summary(self, cfg) -> Dict[str, Any]:
        return {"rank": None, "d": int(cfg.d)}

    def deltas(self, prepared: Prepared, model, w_pre: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        names = [n + ".weight" for n in prepared.analysed]
        return {n[:-len(".weight")]: d.float().cpu() for n, d in model.deltas(names).items()}

    def storage(self, model, out, run_cfg, saved: Dict[str, bool]) -> Dict[str, Any]:
        return {"bytes": 4 * sum(p.numel() for p in model.trainable_parameters()),
                "basis": "θ_d, scalars and head in fp32 (the projection is regenerated from its seed)"}

    def finish(self, model, cfg) -> tuple:
        info = {"subspace": {"d": model.d, "D": model.D, "projection": cfg.projection, "said": bool(cfg.said),
                             "head_lr": float(cfg.head_lr) if cfg.head_lr else None,
                             "subspace_params": model.num_subspace_params, "direct_params": model.num_direct_params}}
        return model.merge_into_base(), info  # θ0 + P θ_d written in: probes and latency see a plain model

    def variants(self, study) -> List[Variant]:
        out = []
        for d in study.dims:
            for said in study.said:
                tag = "said" if said else "did"
                out.append(Variant(f"{self.name}_{tag}", int(d), [f"method.d={int(d)}",
                                                                  f"method.said={str(bool(said)).lower()}"],
                                   {"d": int(d), "said": bool(said)}))
        return out

    def search_variants(self, study) -> List[Variant]:
        if not study.get("lr_search_dims"):
            return [Variant(self.name)]  # one search at the configured d serves every d
        return [Variant(self.name, int(d), [f"method.d={int(d)}", "method.said=false"], {"d": int(d), "said": False})
                for d in study.lr_search_dims]  # DID at each searched d; every d takes the nearest one's rate

    def label(self, record: Dict[str, Any]) -> str:
        return f"subspace {'SAID' if record.get('said') else 'DID'} d={record.get('d')}"

    def variant_name(self, record: Dict[str, Any]) -> Optional[str]:
        return "SAID" if record.get("said") else "DID"


register(Subspace())
