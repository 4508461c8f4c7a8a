"""Cross-entropy and forward KL divergence KL(p_base ‖ p_ft) per token on held-out text (forgetting tracks the
forward KL to the base: Shenfeld et al. 2025), with the base's side computed once, before training.

The base's whole next-token distribution is too big to keep (vocabulary × tokens: 49,152 × 9,600 floats is 1.9 GB
for 200 texts of 48 tokens), and a second copy of the model beside the finetuned one doubles the memory of every
evaluation. So at every scored position the base's distribution is reduced to its k most likely tokens plus one
outcome for the rest (the tail), cached with the base's scores, and the divergence is that of the two distributions
coarse-grained to those k + 1 outcomes:

    KL_k(p ‖ q) = Σ_{i ∈ top_k(p)} p_i (log p_i − log q_i) + p_tail (log p_tail − log q_tail),
    p_tail = Σ_{i ∉ top_k(p)} p_i,   q_tail = Σ_{i ∉ top_k(p)} q_i.

Coarse-graining never increases a divergence (log-sum inequality), so 0 ≤ KL_k ≤ KL; KL_k = KL when k is the
vocabulary, and KL_k = 0 exactly when q = p. Storage is k (index, log-probability) pairs per token. The tail's
log-mass is a log-sum-exp over the tokens outside the top k, not 1 − Σ top k, so it keeps its precision when the
top k hold nearly all the mass.
"""
from __future__ import annotations

from typing import Tuple

import torch

from ..tasks.lm_encoding import IGNORE


def scored_logits(logits: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(next-token logits at the scored positions as float32 (tokens × vocab), their targets, the example each
    belongs to), in row-major order: the order the base's cache and the finetuned pass share."""
    labels = labels[:, 1:]
    scored = labels != IGNORE
    rows = torch.arange(len(labels), device=labels.device)[:, None].expand_as(labels)[scored]
    return logits[:, :-1][scored].float(), labels[scored], rows


def _tail(logp: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """log Σ of exp(logp) over the tokens outside ``idx``, per row (−inf when ``idx`` covers the vocabulary)."""
    return logp.scatter(1, idx, float("-inf")).logsumexp(1)


def top_k(logits: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The base's side: (indices of its k most likely tokens (int32), their log-probabilities, the tail's
    log-probability), per scored token."""
    logp = torch.log_softmax(logits, dim=-1)
    values, idx = logp.topk(min(k, logp.shape[-1]), dim=-1)
    return idx.int(), values, _tail(logp, idx)


def kl_top_k(logits: torch.Tensor, idx: torch.Tensor, base_logp: torch.Tensor, base_tail: torch.Tensor) -> torch.Tensor:
    """KL_k(p_base ‖ q) per scored token (float64), q = softmax(``logits``) of the finetuned model."""
    logq = torch.log_softmax(logits, dim=-1)
    idx = idx.long()
    q_top, q_tail = logq.gather(1, idx).double(), _tail(logq, idx).double()
    p_top, p_tail = base_logp.double(), base_tail.double()
    head = (p_top.exp() * (p_top - q_top)).sum(1)
    tail = torch.where(torch.isinf(p_tail), torch.zeros_like(p_tail), p_tail.exp() * (p_tail - q_tail))
    return head + tail
