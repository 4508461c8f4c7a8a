"""Evaluation of causal LMs: perplexity of the reference tokens and exact match of greedy answers.

Exact match compares normalised answers: lowercase, punctuation removed, first word only — so "Fresh." matches
"fresh". Perplexity over a split is token-weighted: PPL = exp( Σ NLL / N ) over the N scored tokens of all
examples (completion tokens for prompt → completion data, every token after the first for plain text).

Generation is a hand-written greedy loop with a KV cache rather than ``model.generate``, so it runs the
same way through every wrapper (peft, the subspace model, which refuses ``generate``) and is
deterministic: left-padded prompts, position ids that skip the padding, argmax at each step, stopped
at the model's end-of-turn / end-of-sequence tokens.
"""
from __future__ import annotations

import math
import string
from typing import Any, Dict, Iterable, List, Optional

import numpy as np
import torch

from ..device import autocast, to_device
from .lm_encoding import IGNORE, LMEncoded

_PUNCT = str.maketrans("", "", string.punctuation)


def normalise_answer(text: str) -> str:
    """Lowercase, strip punctuation, keep the first word ('' if there is none)."""
    words = text.lower().translate(_PUNCT).split()
    return words[0] if words else ""


def exact_match(predictions: List[str], references: List[str]) -> float:
    """Fraction of predictions whose normalised first word equals the reference's."""
    if len(predictions) != len(references) or not references:
        raise ValueError(f"exact_match needs equally many predictions and references ({len(predictions)} vs "
                         f"{len(references)}), at least one.")
    return float(np.mean([normalise_answer(p) == normalise_answer(r) for p, r in zip(predictions, references)]))


# a task whose reference answers take at most this many distinct values is a classification in words ("fresh" /
# "rotten"): its answers are also kept as class ids, so a run that gives one answer to everything is caught
MAX_ANSWER_CLASSES = 32


def answer_classes(predictions: List[str], references: List[str]) -> Optional[Dict[str, np.ndarray]]:
    """{label, prediction} as class ids when the normalised references take at most MAX_ANSWER_CLASSES values
    (sorted; an answer that is none of them is one more class, the last), else None (free-form answers)."""
    refs = [normalise_answer(r) for r in references]
    choices = sorted(set(refs))
    if not refs or len(choices) > MAX_ANSWER_CLASSES:
        return None
    ids = {c: i for i, c in enumerate(choices)}
    return {"label": np.array([ids[r] for r in refs], dtype=np.int64),
            "prediction": np.array([ids.get(normalise_answer(p), len(choices)) for p in predictions], dtype=np.int64)}


def _cache_field() -> str:
    """The KV cache's keyword and output field: ``cache`` in recent transformers 5, ``past_key_values`` before."""
    from transformers.modeling_outputs import CausalLMOutputWithPast
    return "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


@torch.no_grad()
def nll_sum(model, batch: Dict[str, torch.Tensor], device, precision, pooled: bool = False) -> tuple:
    """(Σ NLL of the labelled tokens per example, number of labelled tokens per example, and with ``pooled``
    the attention-masked mean of the last hidden states per example, else None), next-token shifted."""
    batch = to_device(batch, device)
    with autocast(device, precision):
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=pooled)
    labels = batch["labels"][:, 1:]
    scored = labels != IGNORE  # cross-entropy on the scored positions only: (tokens, vocab) stays small
    rows = torch.arange(len(labels), device=labels.device)[:, None].expand_as(labels)[scored]
    nll = torch.nn.functional.cross_entropy(out.logits[:, :-1][scored].float(), labels[scored], reduction="none")
    sums = torch.zeros(len(labels), device=nll.device).index_add_(0, rows, nll)
    feats = None
    if pooled:
        h, m = out.hidden_states[-1].float(), batch["attention_mask"].unsqueeze(-1).float()
        feats = ((h * m).sum(1) / m.sum(1).clamp(min=1)).cpu()
    return sums.cpu(), scored.sum(1).cpu(), feats


@torch.no_grad()
def perplexity(model, batches: Iterable, device, precision, n: Optional[int] = None) -> Dict[str, Any]:
    """Mean token NLL ('loss') and its exponential over (indices, batch) pairs with −100-masked labels; with
    ``n`` (the number of examples) also each example's summed NLL and scored-token count, in example order."""
    was = model.training
    model.eval()
    total, count = 0.0, 0
    sums, counts = (np.zeros(n, dtype=np.float64), np.zeros(n, dtype=np.int64)) if n is not None else (None, None)
    for idx, batch in batches:
        s, c, _ = nll_sum(model, batch, device, precision)
        total += float(s.sum())
        count += int(c.sum())
        if n is not None:
            sums[idx], counts[idx] = s.double().numpy(), c.numpy()
    model.train(was)
    loss = total / max(count, 1)
    out: Dict[str, Any] = {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": count}
    if n is not None:
        out["per_example"] = {"nll": sums, "tokens": counts}
    return out


def stop_ids(tokenizer, model=None) -> List[int]:
    """End-of-sequence and end-of-turn token ids (greedy decoding stops at any of them)."""
    ids = {tokenizer.eos_token_id}
    for tok in ("<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<end_of_turn>"):
        tid = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id:
            ids.add(tid)
    gen = getattr(model, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None)
    ids.update(extra if isinstance(extra, list) else [extra])
    return sorted(i for i in ids if isinstance(i, int) and i >= 0)


@torch.no_grad()
def greedy(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int, stop: List[int],
           device, precision) -> List[List[int]]:
    """Greedy continuations of left-padded prompts, each cut before its first stop token."""
    ids, mask = input_ids.to(device), attention_mask.to(device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    stop_t = torch.tensor(stop, device=device)
    out_tokens, done, past = [], torch.zeros(len(ids), dtype=torch.bool, device=device), None
    step_ids, step_pos, field = ids, pos, _cache_field()
    for _ in range(max_new_tokens):
        with autocast(device, precision):
            out = model(input_ids=step_ids, attention_mask=mask, position_ids=step_pos, use_cache=True,
                        logits_to_keep=1, **{field: past})
        nxt = out.logits[:, -1].float().argmax(-1)
        out_tokens.append(torch.where(done, torch.full_like(nxt, stop[0] if stop else 0), nxt))
        done |= torch.isin(nxt, stop_t)
        if bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        past = getattr(out, field, None)
        if past is None:  # a model without a cache: feed the whole sequence again
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            step_ids, step_pos = ids, (mask.cumsum(-1) - 1).clamp(min=0)
        else:
            step_ids, step_pos = nxt[:, None], step_pos[:, -1:] + 1
    gen = torch.stack(out_tokens, dim=1).tolist()
    return [row[:next((j for j, t in enumerate(row) if t in stop), len(row))] for row in gen]


@torch.no_grad()
def generate_answers(model, data: LMEncoded, batch_size: int, max_new_tokens: int, device, precision,
                     stop: Optional[List[int]] = None) -> List[str]:
    """Greedy answers (decoded, special tokens skipped) to every prompt of a split, in split order."""
    was = model.training
    model.eval()
    stop = stop if stop is not None else stop_ids(data.tokenizer, model)
    answers: List[str] = [""] * len(data)
    for idx, batch in data.prompt_batches(batch_size):
        for i, toks in zip(idx, greedy(model, batch["input_ids"], batch["attention_mask"], max_new_tokens, stop,
                                       device, precision)):
            answers[i] = data.tokenizer.decode(toks, skip_special_tokens=True)
    model.train(was)
    return answers


def evaluate_lm(model, data: LMEncoded, batch_size: int, device, precision, answers: bool = True,
                max_new_tokens: int = 4, per_example: bool = False) -> Dict[str, Any]:
    """Completion-token loss and perplexity; with ``answers`` also the exact-match accuracy of greedy answers
    (``accuracy``), else ``accuracy`` is None. With ``per_example``: each example's completion NLL and token count
    and, with ``answers``, whether its answer matched, in split order (for paired tests), and where the references
    take few values (``answer_classes``) the answer and reference as class ids (``prediction``, ``label``)."""
    out: Dict[str, Any] = dict(perplexity(model, data.eval_batches(batch_size), device, precision,
                                          n=len(data) if per_example else None))
    out.pop("tokens")
    out["accuracy"] = None
    if answers:
        preds = generate_answers(model, data, batch_size, max_new_tokens, device, precision)
        out["accuracy"] = exact_match(preds, data.answers)
        if per_example:
            out["per_example"]["correct"] = np.array([normalise_answer(p) == normalise_answer(r)
                                                      for p, r in zip(preds, data.answers)])
            out["per_example"].update(answer_classes(preds, data.answers) or {})
    return out
