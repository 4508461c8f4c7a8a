"""Did a run learn? A run can finish every step and still have learned nothing: a learning rate past the cliff sends
a classifier to one class (the majority's accuracy, a huge loss) or a language model's loss up. Such a run is
complete — its artifacts are whole and it is part of the study — but it is flagged ``did_not_learn`` with the
evidence, warned about on the command line, listed in the report, and every verdict says whether it includes one.

The checks, on the last split the run evaluated (the test split, else validation), each a reason on its own:

    one class          the most frequent predicted label covers >= CONSTANT_SHARE of the examples (classifiers, and
                       causal-LM tasks whose reference answers take few values, as class ids: one answer to every
                       prompt, a label or not)
    at the majority    accuracy <= the majority label's share + AT_MAJORITY (both, with >= 2 labels)
    loss exploded      the evaluated mean loss > EXPLODED_LOSS x ln(number of labels) (classifiers: a uniform
                       guess scores ln K), or the last training losses' mean > LOSS_RISE x the first ones' mean
    not finite         a loss that is NaN or infinite

The frozen base (head only) is checked like any run: a head that collapsed is as uninformative as a finetune that
did.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

CONSTANT_SHARE = 0.95
AT_MAJORITY = 0.005
EXPLODED_LOSS = 5.0
LOSS_RISE = 1.5
WINDOW = 10  # training losses averaged at each end


def loss_ends(losses: Sequence[float]) -> tuple:
    """(mean of the first WINDOW training losses, mean of the last WINDOW), or (None, None) without any."""
    xs = [float(x) for x in losses]
    if not xs:
        return None, None
    k = min(WINDOW, max(1, len(xs) // 2))
    return float(np.mean(xs[:k])), float(np.mean(xs[-k:]))


def check(split: str, per_example: Optional[Dict[str, Any]], metrics: Dict[str, Any], num_labels: Optional[int],
          train_losses: Sequence[float] = ()) -> Dict[str, Any]:
    """{did_not_learn, reasons (one sentence each), evidence, split} of one run."""
    reasons: List[str] = []
    evidence: Dict[str, Any] = {}
    first, last = loss_ends(train_losses)
    evidence.update(train_loss_first=first, train_loss_last=last)
    loss = metrics.get("loss")
    evidence["loss"] = None if loss is None else float(loss)
    if loss is not None and not math.isfinite(float(loss)):
        reasons.append(f"its {split} loss is {loss}")
    classifier = bool(num_labels and num_labels >= 2)
    ex = per_example or {}
    if "prediction" in ex and "label" in ex and len(ex["label"]):
        pred, label = np.asarray(ex["prediction"]).astype(np.int64), np.asarray(ex["label"]).astype(np.int64)
        # a causal LM's answers as class ids (tasks.decoding.answer_classes): an answer outside the labels is a class
        classes = int(num_labels) if classifier else int(max(pred.max(), label.max())) + 1
        top = float(np.bincount(pred, minlength=classes).max() / len(pred))
        label_counts = np.bincount(label, minlength=classes)
        majority = float(label_counts.max() / len(label))
        accuracy = float((pred == label).mean())
        evidence.update(majority_prediction_share=top, majority_label_share=majority, accuracy=accuracy)
        if top >= CONSTANT_SHARE:
            what = "class" if classifier else "answer"
            reasons.append(f"it predicts one {what} for {100 * top:.1f} % of the {split} examples")
        if (label_counts > 0).sum() >= 2 and accuracy <= majority + AT_MAJORITY:
            reasons.append(f"its {split} accuracy {accuracy:.3f} is no better than always predicting the majority class "
                           f"({majority:.3f})")
        if classifier and loss is not None and math.isfinite(float(loss)) and \
                float(loss) > EXPLODED_LOSS * math.log(num_labels):
            reasons.append(f"its {split} loss {float(loss):.4g} is over {EXPLODED_LOSS:g} x ln {num_labels} "
                           f"(a uniform guess scores {math.log(num_labels):.3f})")
    if first is not None and last is not None and math.isfinite(first) and last > LOSS_RISE * first:
        reasons.append(f"its training loss rose from {first:.4g} to {last:.4g}")
    return {"did_not_learn": bool(reasons), "reasons": reasons, "evidence": evidence, "split": split}


def sentence(member: str, record: Dict[str, Any]) -> str:
    """'run lora_r64_s1 did not learn: it predicts one class for 99.8 % of the test examples.'"""
    return f"run {member} did not learn: " + "; ".join(record.get("reasons") or ["no reason recorded"]) + "."
