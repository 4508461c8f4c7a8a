"""The learning-rate search (lora_study/study/lr_search.py): choice on validation only, extension of the grid while the best
rate is on an edge, with known answers from completed fake run directories, through the sweeper with a fake run
whose validation score is a known function of the rate, and one real tiny search end to end into study.json."""
import json
import math

import pytest

from conftest import TINY, compose, study_in_process
from lora_study.study import lr_search as L
from lora_study.artifacts import StudyDir
from lora_study.study.planning import member_status


def study(*overrides):
    return compose(list(overrides), "study").study


def complete(sdir, m, val, test=0.5, learned=True):
    """A completed (fake) search run of member ``m`` with validation accuracy ``val`` and test accuracy ``test``
    (``learned=False``: flagged as a run that did not learn)."""
    run = sdir.run(m.id, m.phase)
    (run.path / ".hydra").mkdir(parents=True)
    (run.path / ".hydra" / "config.yaml").write_text("{}")
    (run.path / "metrics.jsonl").write_text("")
    run.write_summary({"status": "complete", "lr": m.lr, "seed": m.seed, "saved": {},
                       "metrics": {"best_validation_accuracy": val, "test_accuracy": test},
                       "learning": {"did_not_learn": not learned, "reasons": [] if learned else ["one class"]}})


def diverge(sdir, m):
    run = sdir.run(m.id, m.phase)
    run.path.mkdir(parents=True)
    run.write_summary({"status": "failed", "reason": "the training loss became nan at step 3", "failed_step": 3,
                       "lr": m.lr, "seed": m.seed})


def lora_r4(*grid, **kw):
    extra = [f"study.{k}={v}" for k, v in kw.items()]
    extra = extra if any(e.startswith("study.lr_search_seeds=") for e in extra) else ["study.lr_search_seeds=1", *extra]
    return study("study.methods=[lora]", "study.lr_search=true", "study.lr_search_ranks=[4]",
                 f"study.lr_grid.lora=[{','.join(map(str, grid))}]", *extra)


def search_round(sdir, st, members, val, new=None):
    """Complete the round ``new`` (default: every member) with validation accuracy val(lr); return the next round."""
    for m in members if new is None else new:
        complete(sdir, m, val(m.lr))
    return L.extensions(st, members, L.scores(sdir, members))


def test_lr_choice_reads_validation_never_test(tmp_path):
    st = lora_r4(1e-4, 3e-4, 1e-3)
    members = L.search_members(st)
    assert [m.id for m in members] == ["lora_r4_lr0.0001_s0", "lora_r4_lr0.0003_s0", "lora_r4_lr0.001_s0"]
    sdir = StudyDir(tmp_path)
    # the middle rate has the best validation accuracy and the worst test accuracy
    for m, val, test in zip(members, (0.7, 0.8, 0.6), (0.95, 0.1, 0.95)):
        assert sdir.run(m.id, "lr_search").path == tmp_path / "lr_search" / m.id
        complete(sdir, m, val, test)
    found = L.scores(sdir, members)
    assert found == {"lora_r4": {1e-4: 0.7, 3e-4: 0.8, 1e-3: 0.6}}
    assert L.extensions(st, members, found) == []  # the best is interior: nothing to extend
    assert L.choose(st, members, found) == {
        "lora_r4": {"lr": 3e-4, "validation_score": 0.8, "on_edge": None, "extensions": 0}}
    assert L.grid_record(found) == {"lora_r4": {"0.0001": 0.7, "0.0003": 0.8, "0.001": 0.6}}


def test_a_best_rate_on_an_edge_is_extended_by_the_grids_step_until_bracketed(tmp_path):
    st = lora_r4(5e-4, 1.5e-3, 5e-3)
    sdir = StudyDir(tmp_path)
    peak = 2e-2  # validation falls with the distance to 2e-2 on a log scale
    val = lambda lr: round(0.9 - 0.1 * abs(math.log10(lr / peak)), 6)  # noqa: E731
    members = L.search_members(st)
    new = search_round(sdir, st, members, val)
    assert [m.lr for m in new] == [1.67e-2]  # 5e-3 × (5e-3 / 1.5e-3), to three significant digits
    assert new[0].id == "lora_r4_lr0.0167_s0" and new[0].phase == "lr_search"
    members += new
    new = search_round(sdir, st, members, val, new)
    assert [m.lr for m in new] == [5.58e-2]  # still the best on the high edge: one more step (×3.34)
    members += new
    assert search_round(sdir, st, members, val, new) == []  # 1.67e-2 is now interior
    found = L.scores(sdir, members)
    assert L.choose(st, members, found)["lora_r4"] == {"lr": 1.67e-2, "validation_score": val(1.67e-2),
                                                       "on_edge": None, "extensions": 2}
    # the low edge goes down by the same rule
    st = lora_r4(1e-3, 3e-3)
    low = L.search_members(st)
    assert [m.lr for m in search_round(StudyDir(tmp_path / "low"), st, low, lambda lr: -lr)] == [3.33e-4]


def test_the_extension_budget_and_an_edge_still_flagged(tmp_path):
    st = lora_r4(1e-3, 3e-3, lr_search_max_extensions=2)
    sdir = StudyDir(tmp_path)
    members = L.search_members(st)
    new, rounds = list(members), 0
    while new:
        new = search_round(sdir, st, members, lambda lr: 1 - lr, new)  # ever lower rates are better
        members += new
        rounds += 1
    assert rounds == 3 and sorted(m.lr for m in members) == [1.11e-4, 3.33e-4, 1e-3, 3e-3]
    chosen = L.choose(st, members, L.scores(sdir, members))
    assert chosen["lora_r4"] == {"lr": 1.11e-4, "validation_score": 1 - 1.11e-4, "on_edge": "low", "extensions": 2}
    note, = L.on_edge_notes(chosen)
    assert note.startswith("lora_r4: the best rate 0.000111 is still the low edge") and "not a searched optimum" in note


def test_a_single_rate_extends_both_ways_and_a_diverged_rate_bounds_the_search(tmp_path):
    st = lora_r4(1e-3, lr_extend_factor=10)
    sdir = StudyDir(tmp_path)
    members = L.search_members(st)
    new = search_round(sdir, st, members, lambda lr: 0.7)
    assert [m.lr for m in new] == [1e-4, 1e-2]  # one rate is on both edges: the factor each way
    complete(sdir, new[0], 0.6)
    diverge(sdir, new[1])
    members += new
    found = L.scores(sdir, members)
    assert found["lora_r4"] == {1e-3: 0.7, 1e-4: 0.6, 1e-2: None}
    assert L.extensions(st, members, found) == []  # bracketed below by 1e-4, above by the diverged 1e-2
    assert L.diverged(sdir, new[1]) == "the training loss became nan at step 3" and L.diverged(sdir, new[0]) is None
    assert L.choose(st, members, found)["lora_r4"]["lr"] == 1e-3
    assert member_status(sdir, new[1]) is not None  # not complete: the sweeper skips it as diverged, not as done


def test_every_rate_runs_at_two_seeds_and_a_rate_one_seed_does_not_learn_at_is_out(tmp_path):
    st = lora_r4(1e-3, 3e-3, 1e-2, lr_search_seeds=2)
    members = L.search_members(st)
    assert [m.id for m in members] == [f"lora_r4_lr{lr:g}_s{s}" for lr in (1e-3, 3e-3, 1e-2) for s in (0, 1)]
    sdir = StudyDir(tmp_path)
    # seed 0 alone would choose 1e-2 (0.82); at seed 1 that rate collapses to the majority class
    scores = {(1e-3, 0): 0.70, (1e-3, 1): 0.72, (3e-3, 0): 0.78, (3e-3, 1): 0.76, (1e-2, 0): 0.82, (1e-2, 1): 0.58}
    for m in members:
        complete(sdir, m, scores[m.lr, m.seed], learned=(m.lr, m.seed) != (1e-2, 1))
    found = L.scores(sdir, members)
    assert found == {"lora_r4": {1e-3: pytest.approx(0.71), 3e-3: pytest.approx(0.77), 1e-2: None}}
    assert L.extensions(st, members, found) == []  # bracketed above by the collapsed rate
    assert L.choose(st, members, found)["lora_r4"]["lr"] == 3e-3
    rec = L.seed_record(sdir, members)
    assert rec["collapsed"] == {"lora_r4": {"0.01": [1]}}
    assert rec["per_seed"]["lora_r4"]["0.003"] == {"0": 0.78, "1": 0.76}
    # an extension runs at every search seed
    st3 = lora_r4(1e-3, lr_search_seeds=2, lr_extend_factor=10)
    first = L.search_members(st3)
    for m in first:
        complete(StudyDir(tmp_path / "x"), m, 0.7)
    new = L.extensions(st3, first, L.scores(StudyDir(tmp_path / "x"), first))
    assert sorted((m.lr, m.seed) for m in new) == [(1e-4, 0), (1e-4, 1), (1e-2, 0), (1e-2, 1)]
    # more search seeds than the study has continue past its last seed
    assert L.search_seeds(study("study.seeds=[3]", "study.lr_search_seeds=3")) == [3, 4, 5]


def test_ties_choose_the_lower_rate_and_extend_every_tied_edge(tmp_path):
    st = lora_r4(1e-3, 3e-3, 1e-2)
    members = L.search_members(st)
    sdir = StudyDir(tmp_path)
    new = search_round(sdir, st, members, lambda lr: 0.578)  # a plateau: every run predicts the majority class
    assert [m.lr for m in new] == [3.33e-4, 3.33e-2]
    assert L.choose(st, members, L.scores(sdir, members))["lora_r4"]["on_edge"] == "low and high"


# -- through the sweeper ---------------------------------------------------------------------------------

# the fake runs' best validation rate per key (a key not named peaks at 1e-3)
PEAKS = {"none": 1e-5, "full": 1e-4, "lora_r1": 2e-2, "subspace_d100": 3e-3, "subspace_d10000": 1e-2}
DIVERGES_ABOVE = 3e-2


@pytest.fixture()
def fake_runs(monkeypatch):
    """Replace training by a run whose validation accuracy is a known function of its rate (peaked at PEAKS, test
    accuracy the opposite) and which diverges above DIVERGES_ABOVE; returns the list of members it ran."""
    from lora_study.run import runner as run_module
    from lora_study.run.train import Diverged
    ran = []

    def execute(cfg, out):
        member, lr = cfg.run.member, float(cfg.optim.lr)
        ran.append(member)
        key = member.split("_lr")[0].split("_s")[0]
        summary = {"member": member, "method": cfg.method.name, "lr": lr, "seed": int(cfg.train.seed), "saved": {},
                   "d": cfg.method.get("d"), "said": cfg.method.get("said")}
        out.path.mkdir(parents=True, exist_ok=True)
        out.log({"step": 1})
        if lr > DIVERGES_ABOVE:
            out.write_summary({**summary, "status": "failed", "reason": "the training loss became nan at step 1",
                               "failed_step": 1})
            raise Diverged(1, float("nan"))
        val = round(0.9 - 0.1 * abs(math.log10(lr / PEAKS.get(key, 1e-3))), 6)
        summary.update(status="complete", metrics={"best_validation_accuracy": val, "test_accuracy": 1 - val})
        out.write_summary(summary)
        return summary

    monkeypatch.setattr(run_module, "execute", execute)
    return ran


def test_a_search_through_the_sweeper_extends_until_bracketed(tmp_path, fake_runs):
    args = [*TINY, "study.methods=[none,full,lora]", "study.ranks=[1]", "study.lr_search=true",
            "study.lr_search_ranks=all", "study.lr_grid.lora=[1e-4,3e-4,1e-3]", f"study.root={tmp_path}",
            "study.name=fake", "study.lr_evidence={lora_r1:{0.001:0.75,0.0001:0.5}}"]
    assert study_in_process(*args) == 0  # the diverged rate is a result of the search, not a failure
    idx = json.loads((tmp_path / "fake" / "study.json").read_text())
    search = idx["lr_search"]
    assert search["metric"] == "best_validation_accuracy" and search["rounds"] == 4
    grid = {k: list(map(float, v)) for k, v in search["grid"].items()}
    assert grid == {"none": [3.7e-4, 1.11e-3, 3.33e-3, 1e-2, 3e-2, 1e-1, 3e-1],  # three steps down, still the best
                    "full": [3e-5, 1e-4, 3e-4],  # bracketed by the grid: not extended
                    "lora_r1": [1e-4, 3e-4, 1e-3, 3.33e-3, 1.11e-2, 3.7e-2]}  # up until 3.7e-2 diverged
    assert search["grid"]["lora_r1"]["0.037"] is None
    chosen = {k: (v["lr"], v["on_edge"], v["extensions"]) for k, v in search["chosen"].items()}
    assert chosen == {"none": (3.7e-4, "low", 3), "full": (1e-4, None, 0), "lora_r1": (1.11e-2, None, 3)}
    # the members train at the chosen rates; the test accuracy (best at the worst rates) was never read
    assert {m["id"]: m["lr"] for m in idx["members"]} == {"none_s0": 3.7e-4, "full_s0": 1e-4, "lora_r1_s0": 1.11e-2}
    assert all(m["status"] == "complete" for m in idx["members"])
    assert idx["lr_evidence"] == {"lora_r1": {"0.0001": 0.5, "0.001": 0.75}}
    assert len(fake_runs) == len(search["members"]) + 3
    # resuming runs nothing again, the diverged rate included, and chooses the same
    fake_runs.clear()
    assert study_in_process(*args) == 0 and fake_runs == []
    assert json.loads((tmp_path / "fake" / "study.json").read_text())["lr_search"]["chosen"] == search["chosen"]


def test_a_subspace_search_at_several_d_gives_each_d_the_nearest_searched_rate(tmp_path, fake_runs):
    args = [*TINY, "study.methods=[subspace]", "study.dims=[10,100,1000,10000]", "study.said=[false,true]",
            "study.lr_search=true", "study.lr_search_dims=[100,10000]", "study.lr_grid.subspace=[1e-3,3e-3,1e-2,3e-2]",
            f"study.root={tmp_path}", "study.name=fake"]
    assert study_in_process(*args) == 0
    idx = json.loads((tmp_path / "fake" / "study.json").read_text())
    search = idx["lr_search"]
    assert sorted(search["grid"]) == ["subspace_d100", "subspace_d10000"]
    assert {k: (v["lr"], v["on_edge"]) for k, v in search["chosen"].items()} == \
        {"subspace_d100": (3e-3, None), "subspace_d10000": (1e-2, None)}
    sdir = StudyDir(tmp_path / "fake")
    for key, per in search["grid"].items():  # each search run trained DID at its own d
        for lr in per:
            s = sdir.run(f"{key}_lr{lr}_s0", "lr_search").summary()
            assert (s["d"], s["said"]) == (int(key.split("_d")[1]), False)
    # d = 10 and 100 take d = 100's rate, 10^4 its own, and 1000 (a tie on the log scale) the smaller d's; SAID as DID
    lrs = {m["id"]: m["lr"] for m in idx["members"]}
    assert lrs == {f"subspace_{v}_d{d}_s0": lr for v in ("did", "said")
                   for d, lr in ((10, 3e-3), (100, 3e-3), (1000, 3e-3), (10000, 1e-2))}


def test_a_tiny_search_end_to_end(tmp_path, cue_task):
    """Real runs of the tiny model on the cue task: full finetuning learns it at 0.01 and is extended once each way
    (the factor 3), where the lower rate does not learn within the budget; LoRA r = 2 at 0.05 does not learn either,
    so it has no searched rate and trains at the study's configured one. Into study.json, the test split never read."""
    args = [*TINY, *cue_task, "train.max_steps=40", "train.batch_size=16", "train.eval_every=40", "heldout=none",
            "study.methods=[full,lora]", "study.ranks=[2]", "study.lr_search=true", "study.lr_search_ranks=all",
            "study.lr_grid.full=[0.01]", "study.lr_grid.lora=[0.05]", "study.lr_search_max_extensions=2",
            "study.lr={full:0.01,lora:0.02}", f"study.root={tmp_path}", "study.name=tiny", "study.lr_search_seeds=1"]
    assert study_in_process(*args) == 0
    idx = json.loads((tmp_path / "tiny" / "study.json").read_text())
    search = idx["lr_search"]
    assert {k: list(map(float, v)) for k, v in search["grid"].items()} == \
        {"full": [0.00333, 0.01, 0.03], "lora_r2": [0.05]}
    sdir = StudyDir(tmp_path / "tiny")
    for key, per in search["per_seed"].items():
        for lr, by_seed in per.items():
            run = sdir.run(f"{key}_lr{lr}_s0", "lr_search")
            learned = not run.summary()["learning"]["did_not_learn"]
            assert by_seed["0"] == run.summary()["metrics"]["best_validation_accuracy"]
            assert search["grid"][key][lr] == (by_seed["0"] if learned else None)  # a collapsed rate has no score
            assert learned == (lr not in search["collapsed"].get(key, {}))
            assert not run.file("delta.safetensors").exists()  # a validation run saves nothing else
            metrics = run.summary()["metrics"]  # and never evaluates the test split
            assert metrics["test_accuracy"] is None and metrics["test_loss"] is None
            assert not run.file("predictions.safetensors").exists() and not run.summary()["saved"]["predictions"]
    assert search["chosen"]["full"]["lr"] == 0.01 and search["chosen"]["lora_r2"]["lr"] is None
    assert search["collapsed"]["lora_r2"] == {"0.05": [0]} and search["seeds"] == [0]
    assert {m["id"]: m["lr"] for m in idx["members"]} == {"full_s0": 0.01, "lora_r2_s0": 0.02}
