"""Seeds until resolved (analysis/sequential.py): the sequential procedure's error rates by simulation — a true
difference on the margin is declared equivalent at most 5 % of the time, a true difference of 0 is declared
different at most 5 % of the time and, with the budget, resolves — and the study sweeper's rounds on fake runs whose
per-example scores are planted (one rank resolves at the first look, one needs more seeds, one never resolves)."""
import json
import math

import numpy as np
import pytest

from lora_study.analysis import crossed, sequential as Q
from conftest import TINY, study_in_process

MC = 2  # Monte-Carlo standard errors of room above a nominal 5 % (see tests/test_crossed.py)


def draw(rng, seeds, examples, shift, sd_seed=0.01, sd_example=0.2, sd_residual=0.3):
    return shift + rng.normal(0, sd_seed, (seeds, 1)) + rng.normal(0, sd_example, (1, examples)) + \
        rng.normal(0, sd_residual, (seeds, examples))


def rates(shift, reps=1500, margin=0.02, max_seeds=9, seed=0):
    rng = np.random.default_rng(seed)
    found = {crossed.EQUIVALENT: 0, crossed.DIFFERENT: 0, crossed.UNRESOLVED: 0}
    for _ in range(reps):
        d = draw(rng, max_seeds, 3000, shift)
        found[Q.run(d, np.zeros_like(d), margin, initial=3, per_round=2)["verdict"]] += 1
    return {k: v / reps for k, v in found.items()}


def test_on_the_margin_equivalence_is_declared_at_most_five_percent_of_the_time():
    r = rates(0.02)
    assert r[crossed.EQUIVALENT] <= 0.05 + MC * math.sqrt(0.05 * 0.95 / 1500)


def test_at_zero_it_resolves_and_is_rarely_called_different():
    r = rates(0.0, reps=800, max_seeds=15, seed=1)
    assert r[crossed.DIFFERENT] <= 0.05 + MC * math.sqrt(0.05 * 0.95 / 800)
    assert r[crossed.EQUIVALENT] >= 0.8  # with up to 15 seeds × 3,000 examples the margin is resolved


def test_the_looks_and_their_alphas():
    assert Q.schedule(3, 2, 10) == [3, 5, 7, 9, 10]
    a = Q.alphas(3, 2, 10)
    assert len(a) == 5 and sum(a) == pytest.approx(0.05) and a[0] > a[-1] > 0
    rng = np.random.default_rng(2)
    d = draw(rng, 9, 800, 0.2)  # far from 0: different at the first look
    assert Q.run(d, np.zeros_like(d), 0.02, 3, 2) == {"verdict": crossed.DIFFERENT, "seeds": 3, "look": 1,
                                                      "alpha": pytest.approx(Q.alphas(3, 2, 9)[0])}


# -- through the sweeper --------------------------------------------------------------------------------------

N = 600
SHIFTS = {"full": 0.0, "none": -0.2, "lora_r1": -0.2, "lora_r2": 0.0, "lora_r4": 0.01}  # difference from full FT


@pytest.fixture()
def planted_runs(monkeypatch):
    """Runs whose per-example test correctness is drawn around a planted accuracy per member key (0.75 + SHIFTS),
    with a small seed effect, the same examples' easiness in every run: r = 1 differs from full FT at once,
    r = 2 (no difference) becomes equivalent as seeds are added, r = 4 (half the margin off) stays open longer."""
    from lora_study.run import runner as run_module
    ran = []
    easy = np.random.default_rng(7).random(N)

    def execute(cfg, out):
        member, seed = cfg.run.member, int(cfg.train.seed)
        ran.append(member)
        key = member.rsplit("_s", 1)[0]
        rng = np.random.default_rng(1000 * seed + sum(map(ord, key)))
        p = 0.75 + SHIFTS[key] + rng.normal(0, 0.003)
        noise = 0.5 * easy + 0.5 * rng.random(N)
        correct = noise < p
        out.path.mkdir(parents=True, exist_ok=True)
        (out.path / ".hydra").mkdir(exist_ok=True)
        (out.path / ".hydra" / "config.yaml").write_text("{}")
        out.log({"step": 1})
        out.write_predictions({"test.correct": correct})
        summary = {"member": member, "method": cfg.method.name, "lr": float(cfg.optim.lr), "seed": seed,
                   "status": "complete", "saved": {"predictions": True},
                   "metrics": {"test_accuracy": float(correct.mean())},
                   "params": {"trainable": 1, "total": 1, "head": 1}, "storage": {"bytes": 1},
                   "memory": {"optimizer_state_bytes": 8, "gradient_bytes": 4, "peak_bytes": 1},
                   "time": {"mean_step_s": 0.1, "tokens_per_s": 1.0}}
        out.write_summary(summary)
        return summary

    monkeypatch.setattr(run_module, "execute", execute)
    return ran


def test_the_sweeper_adds_seeds_only_where_unresolved(tmp_path, planted_runs):
    args = [*TINY, "study.methods=[none,full,lora]", "study.ranks=[1,2,4]", "study.seeds=[0,1,2]",
            "study.until_resolved=true", "study.max_seeds=7", "study.seeds_per_round=2", "study.margin=0.03",
            f"study.root={tmp_path}", "study.name=seq", "study.first_seed_overrides=[]"]
    assert study_in_process(*args) == 0
    idx = json.loads((tmp_path / "seq" / "study.json").read_text())
    seq = idx["sequential"]
    assert seq["reference"] == "full" and [look["seeds"] for look in seq["looks"]][0] == [0, 1, 2]
    final = seq["final"]
    assert final["lora_r1"]["verdict"] == crossed.DIFFERENT and final["lora_r1"]["look"] == 1
    assert final["lora_r2"]["verdict"] == crossed.EQUIVALENT and final["lora_r2"]["look"] > 1
    # seeds were added to the unresolved ranks and to full FT, never to the resolved r = 1 or the frozen base
    seeds_of = lambda key: sorted(m["seed"] for m in idx["members"] if m["id"].rsplit("_s", 1)[0] == key)  # noqa
    assert seeds_of("lora_r1") == [0, 1, 2] and seeds_of("none") == [0, 1, 2]
    assert seeds_of("lora_r2") == final["lora_r2"]["seeds"] and len(seeds_of("full")) >= len(seeds_of("lora_r2"))
    assert all(m["status"] == "complete" for m in idx["members"])
    # resuming runs nothing again and decides the same
    planted_runs.clear()
    assert study_in_process(*args) == 0 and planted_runs == []
    assert json.loads((tmp_path / "seq" / "study.json").read_text())["sequential"]["final"] == final
    # the report reads each rank at its final look
    from lora_study.analysis.loader import load_study
    from lora_study.analysis.measures import Context
    reach = Context(load_study(tmp_path / "seq")).table("reach").set_index("rank")
    assert reach.loc[2, "verdict"] == crossed.EQUIVALENT and reach.loc[2, "seeds"] == len(final["lora_r2"]["seeds"])
    assert reach.loc[1, "alpha"] == pytest.approx(final["lora_r1"]["alpha"])
    # the three ranks make one claim: each tested at 5 % / 3 (Bonferroni), spent over the looks
    assert seq["family_ranks"] == {"lora": 3}
    assert final["lora_r1"]["alpha"] == pytest.approx(Q.alphas(3, 2, 7, alpha=0.05 / 3)[0])
    from lora_study.analysis.measures.verdicts import reach_claims
    ctx = Context(load_study(tmp_path / "seq"))
    (c,) = reach_claims(ctx)
    assert "Bonferroni" in c.why and "r = 1 differs" in c.why
    assert f"r = 1 at {final['lora_r1']['alpha']:.2g}" in c.why  # each rank's final look's level
    assert ctx.table("smallest_rank").procedure.iloc[0].startswith("Bonferroni")


def test_until_resolved_needs_room_for_seeds():
    from conftest import compose
    from lora_study.config import ConfigError
    from lora_study.study.planning import validate_study
    with pytest.raises(ConfigError, match="study.until_resolved=true needs study.max_seeds above"):
        validate_study(compose(["study.until_resolved=true", "study.seeds=[0,1,2]", "study.max_seeds=3"],
                               "study").study)
