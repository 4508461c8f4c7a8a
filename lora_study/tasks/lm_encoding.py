"""Tokenised prompt → completion splits for causal LMs, with the interface of the classification family's
``Encoded`` (``train_batches(batch_size, seed)``, ``eval_batches``, ``fixed_width``) so the one training loop
runs unchanged.

Each example is rendered through the model's chat template: prompt = the user turn plus the header of
the assistant's turn, completion = the assistant's reply and its end-of-turn marker. The loss is the
causal-LM cross-entropy on the completion tokens only:

    L = − (1 / |C|) Σ_{t ∈ C} log p(x_t | x_<t),   C = completion positions of the batch,

which transformers computes from ``labels`` = input ids with −100 at every prompt and padding position.
Sequences longer than ``max_length`` lose the end of the user's message (instructions come first), so
the question, the answer and the turn markers always survive.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple

import torch

from . import shuffled_batches

IGNORE = -100


@dataclass
class LMSplit:
    prompts: List[str]  # the user's message (rendered through the model's chat template when tokenised)
    completions: List[str]  # the assistant's reply: the only tokens the loss is taken on

    def __len__(self) -> int:
        return len(self.prompts)

    def head(self, n: int) -> "LMSplit":
        return LMSplit(self.prompts[:n], self.completions[:n])


def chat_pair(tokenizer, user: str, answer: str) -> Tuple[str, str]:
    """(prompt text, completion text) in the tokenizer's chat template; without a template, plain
    ``user\\n`` then ``answer`` + EOS."""
    if getattr(tokenizer, "chat_template", None):
        msgs = [{"role": "user", "content": user}]
        prompt = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(msgs + [{"role": "assistant", "content": answer}], tokenize=False)
        if full.startswith(prompt):
            return prompt, full[len(prompt):]
    bos = tokenizer.bos_token if tokenizer.bos_token and getattr(tokenizer, "add_bos_token", False) else ""
    return f"{bos}{user}\n", f"{answer}{tokenizer.eos_token or ''}"


def encode_pair(tokenizer, user: str, answer: str, max_length: int) -> Tuple[List[int], List[int]]:
    """Prompt and completion token ids, together at most ``max_length``, cutting the user's message first."""
    def ids(u):
        p, c = chat_pair(tokenizer, u, answer)
        return tokenizer(p, add_special_tokens=False)["input_ids"], tokenizer(c, add_special_tokens=False)["input_ids"]
    p_ids, c_ids = ids(user)
    over = len(p_ids) + len(c_ids) - max_length
    if over > 0:
        u_ids = tokenizer(user, add_special_tokens=False)["input_ids"]
        keep = max(len(u_ids) - over - 2, 0)  # 2 tokens of slack: decoding and re-encoding may merge differently
        p_ids, c_ids = ids(tokenizer.decode(u_ids[:keep]))
    if len(p_ids) + len(c_ids) > max_length:  # a template or answer longer than the budget: cut hard
        c_ids = c_ids[: max(max_length - len(p_ids), max_length // 2)]
        p_ids = p_ids[len(p_ids) - (max_length - len(c_ids)):]
    return p_ids, c_ids


class LMEncoded:
    """A prompt → completion split tokenised on first use of each example; batches padded per batch."""

    def __init__(self, split: LMSplit, tokenizer, max_length: int):
        self.split = split
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        self._cache: Dict[int, Tuple[List[int], List[int]]] = {}

    def __len__(self) -> int:
        return len(self.split)

    @property
    def answers(self) -> List[str]:
        return self.split.completions

    def encoded(self, i: int) -> Tuple[List[int], List[int]]:
        if i not in self._cache:
            self._cache[i] = encode_pair(self.tokenizer, self.split.prompts[i], self.split.completions[i], self.max_length)
        return self._cache[i]

    def batch(self, idx: List[int]) -> Dict[str, torch.Tensor]:
        """Right-padded prompt + completion; labels −100 on prompt and padding tokens."""
        rows = [self.encoded(i) for i in idx]
        width = max(len(p) + len(c) for p, c in rows)
        ids = torch.full((len(idx), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        labels = torch.full((len(idx), width), IGNORE, dtype=torch.long)
        for row, (p, c) in enumerate(rows):
            n = len(p) + len(c)
            ids[row, :n] = torch.tensor(p + c)
            mask[row, :n] = 1
            labels[row, len(p):n] = torch.tensor(c)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    def prompt_batch(self, idx: List[int]) -> Dict[str, torch.Tensor]:
        """Left-padded prompts alone (for generation), with position ids that skip the padding."""
        prompts = [self.encoded(i)[0] for i in idx]
        width = max(len(p) for p in prompts)
        ids = torch.full((len(idx), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, p in enumerate(prompts):
            ids[row, width - len(p):] = torch.tensor(p)
            mask[row, width - len(p):] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def train_batches(self, batch_size: int, seed: int) -> Iterator[Dict[str, torch.Tensor]]:
        return shuffled_batches(self, batch_size, seed)

    def _by_length(self, prompt_only: bool = False) -> List[int]:
        key = (lambda i: len(self.encoded(i)[0])) if prompt_only else (lambda i: sum(map(len, self.encoded(i))))
        return sorted(range(len(self)), key=key)

    def eval_batches(self, batch_size: int) -> Iterator[Tuple[List[int], Dict[str, torch.Tensor]]]:
        """(example indices, batch) in order of length (less padding); metrics do not depend on the order."""
        order = self._by_length()
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            yield idx, self.batch(idx)

    def prompt_batches(self, batch_size: int) -> Iterator[Tuple[List[int], Dict[str, torch.Tensor]]]:
        """(example indices, left-padded prompts), in order of prompt length."""
        order = self._by_length(prompt_only=True)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            yield idx, self.prompt_batch(idx)

    def fixed_width(self, n: int, width: int) -> Dict[str, torch.Tensor]:
        """n examples padded/truncated to exactly ``width`` tokens (for latency measurements)."""
        b = self.batch([i % len(self) for i in range(n)])
        pad = width - b["input_ids"].shape[1]
        if pad > 0:
            fill = {"input_ids": self.pad_id, "attention_mask": 0, "labels": IGNORE}
            b = {k: torch.nn.functional.pad(v, (0, pad), value=fill[k]) for k, v in b.items()}
        return {k: v[:, :width] for k, v in b.items()}


def text_batches(tokenizer, texts: List[str], max_length: int, batch_size: int,
                 pad_id: Optional[int] = None) -> Iterator[Tuple[List[int], Dict[str, torch.Tensor]]]:
    """Plain text for perplexity: (indices, right-padded batch with labels on every real token)."""
    pad = pad_id if pad_id is not None else (tokenizer.pad_token_id or 0)
    enc = [tokenizer(t, truncation=True, max_length=max_length)["input_ids"] for t in texts]
    order = sorted(range(len(texts)), key=lambda i: len(enc[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        width = max(len(enc[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        labels = torch.full_like(ids, IGNORE)
        for row, i in enumerate(idx):
            ids[row, :len(enc[i])] = torch.tensor(enc[i])
            mask[row, :len(enc[i])] = 1
            labels[row, :len(enc[i])] = torch.tensor(enc[i])
        yield idx, {"input_ids": ids, "attention_mask": mask, "labels": labels}
