"""Tokenised splits and batches. The order of training batches depends on the run seed alone, so every
method sees the same batches in the same order for the same seed."""
from __future__ import annotations

from typing import Dict, Iterator, List

import torch

from .tasks import Split


def shuffled_batches(data, batch_size: int, seed: int) -> Iterator[Dict[str, torch.Tensor]]:
    """Endless shuffled batches of ``data`` (anything with ``len`` and ``batch(indices)``); a new permutation
    per epoch from a generator seeded by ``seed``, so every method sees the same batches in the same order."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(data), generator=gen).tolist()
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield data.batch(order[start:start + batch_size])


class Encoded:
    """A split tokenised (truncated to ``max_length``, unpadded) on first use of each example, so a short
    run over a large training split only tokenises what it sees; batches are padded per batch."""

    def __init__(self, split: Split, tokenizer, max_length: int):
        self.split = split
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.labels = list(split.labels)
        self.pad_id = tokenizer.pad_token_id or 0
        self._cache: Dict[int, Dict[str, List[int]]] = {}

    def _encode(self, idx: List[int]) -> List[Dict[str, List[int]]]:
        todo = [i for i in idx if i not in self._cache]
        if todo:
            texts = [self.split.texts[i] for i in todo]
            pairs = [self.split.pairs[i] for i in todo] if self.split.pairs else None
            enc = self.tokenizer(texts, pairs, truncation=True, max_length=self.max_length)
            for row, i in enumerate(todo):
                self._cache[i] = {k: enc[k][row] for k in ("input_ids", "token_type_ids") if k in enc}
        return [self._cache[i] for i in idx]

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, idx: List[int]) -> Dict[str, torch.Tensor]:
        rows = self._encode(idx)
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(idx), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        types = torch.zeros((len(idx), width), dtype=torch.long) if "token_type_ids" in rows[0] else None
        for row, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[row, :n] = torch.tensor(r["input_ids"])
            mask[row, :n] = 1
            if types is not None:
                types[row, :n] = torch.tensor(r["token_type_ids"])
        out = {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([self.labels[i] for i in idx])}
        if types is not None:
            out["token_type_ids"] = types
        return out

    def train_batches(self, batch_size: int, seed: int) -> Iterator[Dict[str, torch.Tensor]]:
        return shuffled_batches(self, batch_size, seed)

    def eval_batches(self, batch_size: int) -> Iterator[Dict[str, torch.Tensor]]:
        """Batches in order of length (less padding); metrics do not depend on the order."""
        rows = self._encode(list(range(len(self))))
        order = sorted(range(len(self)), key=lambda i: len(rows[i]["input_ids"]))
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
