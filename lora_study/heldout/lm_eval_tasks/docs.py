"""The documents of the suite's offline lm-eval tasks, built from packaged corpora. lm-eval calls these with the
task's metadata, to which the suite adds ``n`` (documents; None: the default below), ``seed`` and ``max_words``
(each text cut to its first words). The draw is seeded and balanced over the labels, the same in every run."""
from __future__ import annotations

from typing import List

import numpy as np

N_DEFAULT = 200


def _balanced(texts_by_label: List[List[str]], n, seed: int, max_words) -> dict:
    import datasets
    n = int(n or N_DEFAULT)
    rng = np.random.default_rng(int(seed or 0))
    rows = []
    for label, texts in enumerate(texts_by_label):
        share = n // len(texts_by_label) + (label < n % len(texts_by_label))
        for i in sorted(rng.permutation(len(texts))[:share]):
            words = str(texts[i]).split()
            rows.append({"text": " ".join(words[:int(max_words)] if max_words else words), "label": label})
    order = rng.permutation(len(rows))
    return {"test": datasets.Dataset.from_list([rows[i] for i in order])}


def subjectivity(n=None, seed=0, max_words=None, **_) -> dict:
    """Plot summaries (label 0) and reviews from the default task's reserve (label 1)."""
    from lora_study import corpora
    from lora_study.heldout.probe_data import DEFAULT_REVIEW_SPLIT
    reviews = corpora.review_splits(**DEFAULT_REVIEW_SPLIT)["reserve"].text.astype(str).tolist()
    return _balanced([list(corpora.plot_summaries()), reviews], n, seed, max_words)


def bbc_topic(n=None, seed=0, max_words=None, **_) -> dict:
    """BBC articles by topic: business, entertainment, politics, sport, tech (labels 0-4)."""
    from lora_study import corpora
    frame = corpora.bbc_topic_frame()
    return _balanced([frame[frame.label == k].text.tolist() for k in range(5)], n, seed, max_words)
