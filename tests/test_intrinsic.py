"""analysis/measures/intrinsic_dim.py: the tradeoff's d90 row, the summary over seeds, the finding, and a tiny
intrinsic_dim study run and analysed through the CLIs (the d90 maths itself: tests/test_dimension.py)."""
import json
import math

import numpy as np
import pandas as pd
import pytest

from lora_study.analysis.measures.intrinsic_dim import at_d90, finding, format_summary, summarize


def _runs(rows):
    return pd.DataFrame(rows, columns=["member", "method", "label", "d", "variant", "seed", "test_accuracy"])


def test_tradeoff_keeps_the_smallest_tested_d_reaching_d90_per_variant():
    rows = [("full_s0", "full", "full FT", None, None, 0, 0.80), ("full_s1", "full", "full FT", None, None, 1, 0.80)]
    for variant, accs in (("DID", {10: 0.60, 100: 0.70, 1000: 0.75}), ("SAID", {10: 0.70, 100: 0.74, 1000: 0.79})):
        for d, acc in accs.items():
            for seed, shift in ((0, -0.01), (1, 0.01)):  # seed means are the accs above
                rows.append((f"subspace_{variant.lower()}_d{d}_s{seed}", "subspace", f"subspace {variant} d={d}", d,
                             variant, seed, acc + shift))
    kept = at_d90(_runs(rows))  # target 0.72: DID first reaches it at d=1000, SAID at d=100
    assert sorted(set(kept.label)) == ["subspace DID at d90 (d=1,000)", "subspace SAID at d90 (d=100)"]
    assert len(kept) == 4  # both seeds of each
    never = _runs(rows).assign(test_accuracy=lambda f: f.test_accuracy.where(f.method == "full", 0.5))
    assert at_d90(never).empty  # no d reaches the target: no d90 row
    assert at_d90(_runs(rows)[lambda f: f.method == "subspace"]).empty  # no full FT: no target


def test_tradeoff_row_is_the_first_tested_d_reaching_the_target_after_a_dip():
    # full FT 0.80, target 0.72. DID: 0.70 at d=100 falls short, dips to 0.60 at d=1000, reaches 0.90 at d=10^4:
    # the grid value is 10,000 (the interpolated d90 lies between 1,000 and 10,000). SAID: 0.75 at d=100 already.
    rows = [("full_s0", "full", "full FT", None, None, 0, 0.80)]
    for variant, accs in (("DID", {10: 0.50, 100: 0.70, 1000: 0.60, 10000: 0.90}),
                          ("SAID", {10: 0.50, 100: 0.75, 1000: 0.60, 10000: 0.90})):
        rows += [(f"subspace_{variant.lower()}_d{d}_s0", "subspace", f"subspace {variant} d={d}", d, variant, 0, acc)
                 for d, acc in accs.items()]
    kept = at_d90(_runs(rows))
    assert dict(zip(kept.variant, kept.d)) == {"DID": 10000, "SAID": 100}
    assert sorted(kept.label) == ["subspace DID at d90 (d=10,000)", "subspace SAID at d90 (d=100)"]


def test_summary_averages_reached_seeds_and_counts_them():
    table = pd.DataFrame({"variant": ["DID", "DID", "DID"], "seed": [0, 1, 2], "d90": [100.0, 300.0, float("nan")],
                          "d90_gain": [float("nan")] * 3, "D": [1e6] * 3, "d_min": [10.0] * 3, "d_max": [1e4] * 3, "full": [0.8] * 3,
                          "base": [0.6] * 3, "target": [0.72] * 3, "target_gain": [0.78] * 3, "best": [0.75] * 3})
    s = summarize(table).iloc[0]
    assert s.d90_mean == 200 and s.d90_reached == 2 and s.d90_std == pytest.approx(math.sqrt(2e4))
    assert s.d90_gain_reached == 0 and math.isnan(s.d90_gain_mean)


def test_finding_states_d90_against_D_and_the_published_range():
    nan = float("nan")
    table = pd.DataFrame({"variant": ["DID", "DID", "SAID", "SAID"], "seed": [0, 1, 0, 1],
                          "d90": [800.0, 1200.0, 10.0, 10.0], "d90_gain": [3000.0, nan, 1500.0, 2500.0],
                          "D": [2e7] * 4, "d_min": [10.0] * 4, "d_max": [1e5] * 4, "full": [0.82] * 4, "base": [0.70] * 4,
                          "target": [0.738] * 4, "target_gain": [0.808] * 4, "best": [0.81] * 4})
    s = summarize(table)
    text = finding(s, {"model": "m", "task": "t"})
    assert "DID 1,000 ± 283" in text and "SAID ≤ 10 (already reached at the smallest tested d)" in text
    assert "DID 3,000 (1 of 2 seeds)" in text and "SAID 2,000 ± 707" in text
    assert "d90 / D is DID 5.0e-05, SAID 5.0e-07." in text  # the verdict on it is a claim (verdicts.py)
    assert "SAID's d90-gain is below DID's" in text and "secondary" in text
    assert "lies within the published range 207–9,295" in text
    assert list(format_summary(s)["d90"]) == ["1,000 ± 283", "≤ 10"]
    no_gain = finding(summarize(table.assign(full=0.70, target=0.63)))
    assert "no conclusion" in no_gain and "≪" not in no_gain and "published range" not in no_gain


def test_intrinsic_dim_study_runs_and_is_analysed(tmp_path, cue_task):
    """On the cue task, where full finetuning learns (so its accuracy and the base's differ)."""
    from lora_study.analysis import load_study
    from lora_study.analysis.analyze import analyze
    from lora_study.analysis.measures.intrinsic_dim import lora_param_counts
    from lora_study.analysis.report import report
    from conftest import study_in_process
    from lora_study import methods
    code = study_in_process("experiment=intrinsic_dim", "model=tiny", *cue_task, "train.max_steps=60",
                            "train.eval_every=60", "train.batch_size=16", "train.max_length=32", "study.dims=[10,1000]",
                            "study.lr.full=1e-2", "study.lr_search_dims=[10,1000]", "study.lr_grid.subspace=[0.01,0.1]",
                            "study.lr_search_max_extensions=0", "study.lr_search_seeds=1", f"study.root={tmp_path}",
                            "study.name=t")
    assert code == 0
    study = tmp_path / "t"
    idx = json.loads((study / "study.json").read_text())
    assert [m["id"] for m in idx["members"]] == [
        "none_s0", "full_s0", "subspace_did_d10_s0", "subspace_said_d10_s0", "subspace_did_d1000_s0", "subspace_said_d1000_s0"]
    assert all(m["status"] == "complete" for m in idx["members"])
    # θ_d's rate searched on validation at each d of lr_search_dims (DID); each d, DID and SAID, trains at its own
    chosen = idx["lr_search"]["chosen"]
    assert sorted(idx["lr_search"]["grid"]) == ["subspace_d10", "subspace_d1000"] and len(idx["lr_search"]["members"]) == 4
    for m in idx["members"]:
        if m["method"] == "subspace":
            searched = chosen[f"subspace_d{m['d']}"]["lr"]  # None where every rate left a seed unlearnt
            assert m["lr"] == (searched if searched is not None else 0.01), m["id"]  # else study.lr.subspace
    acc = {}
    for m in idx["members"]:
        s = json.loads((study / m["dir"] / "summary.json").read_text())
        acc[m["id"]] = s["metrics"]["test_accuracy"]
        if methods.get(m["method"]).axis != "d":
            continue
        # d counts every trained number of the subspace (SAID's per-layer scales included), plus the head
        assert s["params"]["trainable"] == m["d"] + s["params"]["head"], m["id"]
        assert s["subspace"]["said"] == ("said" in m["id"]) and s["lr"] == m["lr"]
        assert s["subspace"]["head_lr"] == 0.3  # the head trains at its own rate (experiment=intrinsic_dim)
        assert 0 < s["subspace"]["d"] < s["subspace"]["D"]

    st = load_study(study)
    out = study / "analysis"
    analyze(st, out)
    for name in ("intrinsic_dim", "intrinsic_dim_summary"):
        assert (out / f"{name}.csv").exists() and (out / f"{name}.parquet").exists(), name
    assert (out / "intrinsic_dim.png").stat().st_size > 1000 and (out / "intrinsic_dim.pdf").exists()
    table = pd.read_parquet(out / "intrinsic_dim.parquet").set_index("variant")
    assert sorted(table.index) == ["DID", "SAID"] and set(table.seed) == {0}
    assert (table.dims_tested == 2).all() and (table.d_min == 10).all() and (table.d_max == 1000).all()
    full, base = acc["full_s0"], acc["none_s0"]
    assert full - base > 0.3  # a gain: targets relative to full FT and to its gain differ
    for variant in ("DID", "SAID"):  # the references and the curve are the runs' own, d90 worked out by hand
        row = table.loc[variant]
        a10, a1000 = acc[f"subspace_{variant.lower()}_d10_s0"], acc[f"subspace_{variant.lower()}_d1000_s0"]
        assert (row.full, row.base, row.best) == (full, base, max(a10, a1000))
        assert row.target == pytest.approx(0.9 * full) and row.target_gain == pytest.approx(base + 0.9 * (full - base))
        t = row.target
        grid = 10.0 if a10 >= t else 1000.0 if a1000 >= t else float("nan")  # the first tested d reaching it
        between = 10 ** (1 + 2 * (t - a10) / (a1000 - a10)) if a10 < t <= a1000 else float("nan")
        assert row.d90 == pytest.approx(grid, nan_ok=True)
        assert row.d90_interpolated == pytest.approx(between if a10 < t else grid, rel=1e-9, nan_ok=True)
        assert row.D == json.loads((study / "runs" / f"subspace_{variant.lower()}_d10_s0" / "summary.json").read_text())[
            "subspace"]["D"]
    # no LoRA runs here: LoRA's counts on the d axis come from ΔW shapes, 2 layers x (W_q, W_v) x (16 + 16) per rank
    assert lora_param_counts(st) == {r: 128 * r for r in (1, 2, 4, 8, 16, 32, 64)}

    report(st, study / "report")
    md = (study / "report" / "report.md").read_text()
    section = md.split("## Intrinsic dimension")[1].split("\n## ")[0]
    assert "figures/intrinsic_dim.png" in section and "Aghajanyan" in section and "secondary" in section
    assert "Not measured" not in section and "| DID |" in section and "| SAID |" in section
    # the published d90 the prose compares with sit in a table; no section for what a subspace study has no data for
    assert "### Published d90" in md and "| BERT-base | 1,608 | 8,030 | 1,861 | 9,295 |" in md
    h2 = [line[3:] for line in md.splitlines() if line.startswith("## ")]
    for absent in ("Does merging remove", "Does LoRA reach", "Does full finetuning's update survive",
                   "Does LoRA forget less"):
        assert not any(h.startswith(absent) for h in h2), absent
    assert "Were the learning rates fair? The validation sweep" in h2  # its own section, with no reach to sit under
    from lora_study.analysis.check import check
    assert check(study / "report") == []  # every number of its prose in a table or a claim
    # whether d90 reaches the target is a paired comparison with full FT, on the same test examples
    from lora_study.analysis.measures.intrinsic_dim import intrinsic_table, summarize, target_margins
    summary = summarize(intrinsic_table(st))
    margins = target_margins(st, summary)
    margins = margins[margins.target == "accuracy"]  # the d90-gain target's rows: tested by hand above
    expected = {(r.variant, d) for _, r in summary.iterrows() for d in (r.d90_mean, r.d90_below) if d == d}
    assert set(zip(margins.variant, margins.d)) == expected  # at d90 and below it, where they exist
    assert (margins.ci_low <= margins.margin).all()
    assert (margins.margin <= margins.ci_high).all()
    for _, r in margins.iterrows():
        a = acc[f"subspace_{r.variant.lower()}_d{int(r.d)}_s0"]
        assert r.margin == pytest.approx(a - 0.9 * full, abs=1e-9)
        assert r.verdict == ("reached" if r.ci_low > 0 else "not reached" if r.ci_high < 0 else "unresolved")
    rates = {int(m["d"]): m["lr"] for m in idx["members"] if m["id"].startswith("subspace_did")}
    phrase = (f"one learning rate for every d ({rates[10]:g})" if rates[10] == rates[1000] else
              f"θ_d's learning rate by d ({rates[10]:g} at d = 10, {rates[1000]:g} at d = 1,000)")
    assert phrase in section


def test_reaching_the_d90_target_is_a_paired_comparison_with_full_ft():
    """target_margins on per-example outputs with known answers: acc(d) − 0.9 · acc(full) on shared examples."""
    from types import SimpleNamespace

    from lora_study.analysis.measures.intrinsic_dim import target_margins

    n = 1000
    rng = np.random.default_rng(0)

    def run(correct, variant=None, d=None):
        p = {"test.correct": np.asarray(correct, dtype=np.float64)}
        return SimpleNamespace(variant=variant, value=d, seed=0, predictions=lambda: p)

    full = (rng.random(n) < 0.8).astype(float)
    curves = {("DID", 100): 0.60, ("DID", 1000): 0.90, ("SAID", 100): 0.72}
    runs = {key: run((rng.random(n) < p).astype(float), *key) for key, p in curves.items()}
    base = (rng.random(n) < 0.5).astype(float)
    study = SimpleNamespace(references=lambda: [run(full)], baselines=lambda: [run(base)],
                            swept=lambda axis: list(runs.values()))
    nan = float("nan")
    summary = pd.DataFrame([
        {"variant": "DID", "seeds": 1, "d90_mean": 1000.0, "d90_std": nan, "d90_below": 100.0, "d90_gain_mean": 1000.0,
         "d90_gain_std": nan, "d90_gain_below": nan},
        {"variant": "SAID", "seeds": 1, "d90_mean": 100.0, "d90_std": nan, "d90_below": nan, "d90_gain_mean": nan,
         "d90_gain_std": nan, "d90_gain_below": nan}])
    margins = target_margins(study, summary)
    gain = margins[margins.target == "gain"].iloc[0]  # DID at d = 1,000 against base + 0.9 (full − base)
    acc = runs[("DID", 1000)].predictions()["test.correct"].mean()
    assert gain.margin == pytest.approx(acc - base.mean() - 0.9 * (full.mean() - base.mean()), abs=1e-12)
    m = margins[margins.target == "accuracy"].set_index(["variant", "d"])
    assert sorted(m.index) == [("DID", 100.0), ("DID", 1000.0), ("SAID", 100.0)]
    for key in m.index:
        r = m.loc[key]
        acc = runs[(key[0], int(key[1]))].predictions()["test.correct"].mean()
        assert r.margin == pytest.approx(acc - 0.9 * full.mean(), abs=1e-12)
        assert r.ci_low < r.margin < r.ci_high and r.ci_high - r.ci_low < 0.1  # 1,000 shared examples
    assert m.loc[("DID", 100.0)].verdict == "not reached"  # 0.60 against a target of 0.72
    assert m.loc[("DID", 1000.0)].verdict == "reached"  # 0.90
    assert m.loc[("DID", 1000.0)]["where"] == "d90" and m.loc[("DID", 100.0)]["where"] == "below"
    # SAID sits on the target: the interval covers 0
    assert m.loc[("SAID", 100.0)].verdict == "unresolved" and m.loc[("SAID", 100.0)].ci_low < 0 < m.loc[("SAID", 100.0)].ci_high
    from lora_study.analysis.measures.intrinsic_dim import _margins_phrase
    text = _margins_phrase(m.reset_index())
    assert "acc(d) − 0.9 × acc(full FT)" in text and "d = 1,000 +0.1" in text and "(not reached)" in text
    assert "'Unresolved' means" in text  # the caveat comes with an unresolved comparison, and only then
    assert "'Unresolved' means" not in _margins_phrase(m.reset_index().query("verdict != 'unresolved'"))
