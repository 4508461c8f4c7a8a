"""Tokenised splits and batches. The order of training batches depends on the run seed alone, so every
method sees the same batches in the same order for the same seed."""
from __future__ import annotations

from typing import Dict, Iterator, List

import torch

from .tasks import Split


class Encoded:
    """A split tokenised once (truncated to ``max_length``, unpadded); batches are padded per batch."""

    def __init__(self, split: Split, tokenizer, max_length: int):
        enc = tokenizer(split.texts, split.pairs, truncation=True, max_length=max_length) if split.pairs \
            else tokenizer(split.texts, truncation=True, max_length=max_length)
        self.input_ids: List[List[int]] = enc["input_ids"]
        self.token_type_ids = enc.get("token_type_ids")
        self.labels = list(split.labels)
        self.pad_id = tokenizer.pad_token_id or 0

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, idx: List[int]) -> Dict[str, torch.Tensor]:
        width = max(len(self.input_ids[i]) for i in idx)
        ids = torch.full((len(idx), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            seq = self.input_ids[i]
            ids[row, :len(seq)] = torch.tensor(seq)
            mask[row, :len(seq)] = 1
        out = {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([self.labels[i] for i in idx])}
        if self.token_type_ids is not None:
            tt = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                tt[row, :len(self.token_type_ids[i])] = torch.tensor(self.token_type_ids[i])
            out["token_type_ids"] = tt
        return out

    def train_batches(self, batch_size: int, seed: int) -> Iterator[Dict[str, torch.Tensor]]:
        """Endless shuffled batches; a new permutation per epoch from a generator seeded by ``seed``."""
        gen = torch.Generator().manual_seed(seed)
        while True:
            order = torch.randperm(len(self), generator=gen).tolist()
            for start in range(0, len(order) - batch_size + 1, batch_size):
                yield self.batch(order[start:start + batch_size])

    def eval_batches(self, batch_size: int) -> Iterator[Dict[str, torch.Tensor]]:
        """Batches in order of length (less padding); metrics do not depend on the order."""
        order = sorted(range(len(self)), key=lambda i: len(self.input_ids[i]))
        for start in range(0, len(order), batch_size):
            yield self.batch(order[start:start + batch_size])

    def fixed_width(self, n: int, width: int) -> Dict[str, torch.Tensor]:
        """n examples padded/truncated to exactly ``width`` tokens (for latency measurements)."""
        idx = [i % len(self) for i in range(n)]
        b = self.batch(idx)
        pad = width - b["input_ids"].shape[1]
        if pad > 0:
            b = {k: (torch.nn.functional.pad(v, (0, pad), value=self.pad_id if k == "input_ids" else 0)
                     if v.dim() == 2 else v) for k, v in b.items()}
        return {k: (v[:, :width] if v.dim() == 2 else v) for k, v in b.items()}
