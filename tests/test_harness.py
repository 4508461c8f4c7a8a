"""Forgetting of causal LMs as the field measures it: lm-evaluation-harness tasks (a local task in lm-eval's own
format, tests/data/lm_eval_tasks), cross-entropy and KL to the base on held-out text; the identity forgets nothing
exactly, a perturbed model forgets on every measure, and the per-example arrays are the ones the analysis pairs."""
import copy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import compose, load_model
from lora_study.models import ModelConfig
from lora_study.schema import ConfigError

TASKS = str(Path(__file__).parent / "data" / "lm_eval_tasks")
HELDOUT = ["heldout.n_test=6", "heldout.n_drift=6", "heldout.max_length=24", "heldout.lm_tasks=[lee_wiki]",
           "heldout.kl_top_k=64", "heldout.lm_eval.tasks=[tiny_mc]", f"heldout.lm_eval.include_path=[{TASKS}]"]
KINDS = ["animal", "fruit", "colour", "tool"]


@pytest.fixture(scope="module")
def taught():
    """The tiny Llama taught tiny_mc's answers in a few dozen steps: a base that scores well above chance."""
    import json
    lm = load_model(ModelConfig(source="tiny_llama"), family="causal_lm")
    model, tok = copy.deepcopy(lm.model), lm.tokenizer
    rows = [json.loads(line) for line in Path(TASKS, "tiny_mc.jsonl").read_text().splitlines()]
    batch = tok([f"Word: {r['word']}\nKind: {KINDS[r['label']]}" for r in rows], return_tensors="pt", padding=True)
    last = batch["attention_mask"].sum(1, keepdim=True) - 1  # the answer: the last real token
    labels = torch.full_like(batch["input_ids"], -100).scatter(1, last, batch["input_ids"].gather(1, last))
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    for _ in range(80):
        opt.zero_grad()
        model(**batch, labels=labels).loss.backward()
        opt.step()
    return model.eval(), tok


def _scorer(model, tok):
    from lora_study.heldout import make_scorer
    cfg = compose(HELDOUT).heldout
    return make_scorer(cfg, "causal_lm", model, tok, f"tiny-llama-taught-{id(model)}", torch.device("cpu"),
                       batch_size=8)


def test_identity_forgets_nothing_exactly_and_a_perturbed_model_forgets_on_every_measure(taught):
    base, tok = taught
    model = copy.deepcopy(base)
    scorer = _scorer(model, tok)
    same = scorer.evaluate(model)
    ex = same["per_example"]
    assert scorer.base_scores["tiny_mc"] >= 0.75 > same["tasks"]["tiny_mc"]["chance"]  # the taught base is informative
    assert np.array_equal(ex["lee_wiki_kl.finetuned_kl_sum"], np.zeros(6))  # KL(p ‖ p) = 0, not just small
    assert np.array_equal(ex["lee_wiki.finetuned_nll"], ex["lee_wiki.base_nll"])
    assert np.array_equal(ex["tiny_mc.finetuned_correct"], ex["tiny_mc.base_correct"])
    assert all(t["forgetting"] == 0.0 for t in same["tasks"].values())
    assert same["forgetting_by_unit"] == {"accuracy": 0.0, "perplexity": 0.0, "kl": 0.0}

    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # noise of the weights' own scale on every matrix
        for p in model.parameters():
            if p.dim() == 2:
                p.add_(torch.randn(p.shape, generator=g) * p.std())
    hurt = scorer.evaluate(model)
    ex, t = hurt["per_example"], hurt["tasks"]
    assert (ex["lee_wiki_kl.finetuned_kl_sum"] > 0).all() and t["lee_wiki_kl"]["forgetting"] > 0
    per_token = lambda side: ex[f"lee_wiki.{side}_nll"].sum() / ex[f"lee_wiki.{side}_tokens"].sum()  # noqa: E731
    assert per_token("finetuned") > per_token("base") and t["lee_wiki"]["relative"] > 0
    assert t["tiny_mc"]["finetuned"] < t["tiny_mc"]["base"] and t["tiny_mc"]["forgetting"] > 0
    assert hurt["forgetting_mean"] == pytest.approx(t["tiny_mc"]["forgetting"])  # accuracy only: units kept apart

    # the analysis reads exactly these arrays: its paired per-example forgetting in each unit
    from analysis.measures.forgetting import forgetting_scores
    preds = {f"heldout.{k}": v for k, v in ex.items()}
    runs = [SimpleNamespace(seed=0, predictions=lambda: preds)]
    kl = forgetting_scores(runs, ["lee_wiki_kl"], unit="kl")[0]
    assert np.allclose(kl, ex["lee_wiki_kl.finetuned_kl_sum"] / ex["lee_wiki_kl.finetuned_tokens"]) and (kl > 0).all()
    ce = forgetting_scores(runs, ["lee_wiki"], unit="perplexity")[0]
    assert ce.mean() > 0
    acc = forgetting_scores(runs, ["tiny_mc"], unit="accuracy")[0]
    assert acc.mean() == pytest.approx(t["tiny_mc"]["forgetting"]) and len(acc) == 32


def test_an_unknown_lm_eval_task_or_folder_stops_before_any_work(taught):
    from lora_study.heldout import harness
    cfg = compose(HELDOUT).heldout.lm_eval
    cfg.include_path = [TASKS + "/missing"]
    with pytest.raises(ConfigError, match="not a folder"):
        harness.task_manager(cfg)
    manager = harness._task_manager(compose(HELDOUT).heldout.lm_eval, ["tiny_mc"])
    assert "tiny_mc" in manager.all_tasks and "subjectivity_mc" in manager.all_tasks  # the packaged tasks too
