"""The report of a tiny-model study: contents, the verdict table first, one section per claim, numbered and captioned
figures, the cost / formula / quality tables, every computed table shipped, the amplification table beside Hu et al.'s,
learning vs forgetting over checkpoints, the learning-rate heatmap, self-contained HTML, byte-identical reruns but
the timings, a study missing a method, and the notebooks executed top to bottom."""
import hashlib
import json
import re
import shutil

import pandas as pd
import pytest

from conftest import ROOT, cli, load_model

CLAIMS = ["Verdicts", "The tradeoff: what each method costs and what it gets", "Does merging remove LoRA's latency?",
          "Choosing a rank", "Does LoRA reach full finetuning", "Does full finetuning's update survive",
          "Is the update low-rank? Spectra of ΔW", "Do LoRA ranks share directions?",
          "Do low-rank updates bring in intruder dimensions?", "Does ΔW amplify directions W barely uses?",
          "Does LoRA forget less?"]  # no "Intrinsic dimension" section: the tiny study trains no subspace
PARTS = ["Optimizer memory: measured against the formulas", "Quality", "Were the learning rates fair?",
         "Trained at rank k against truncated to rank k", "Cumulative energy", "Rank at 90 % energy",
         "Relative update size per layer", "Subspace similarity per layer", "Full finetuning's update inside LoRA's",
         "Learning vs forgetting", "Learning vs forgetting over training",
         "Forgetting per held-out task"]
FIGURES = ["choose_rank", "reach", "lr_heatmap", "truncation", "spectra", "cumulative_energy", "rank90_heatmap",
           "update_size", "similarity", "similarity_layers", "intruders", "forgetting_vs_rank", "pareto",
           "training_length"]


def headings(md: str, level: int):
    return [line[level + 1:] for line in md.splitlines() if line.startswith("#" * level + " ")]


def test_report_has_contents_then_verdicts_then_a_section_per_claim(reported):
    md = (reported / "report" / "report.md").read_text()
    h2 = headings(md, 2)
    assert h2[:2] == ["Contents", "Verdicts"]
    for i, claim in enumerate(CLAIMS):  # in this order, each a top-level section
        assert any(h.startswith(claim) for h in h2), claim
        assert [j for j, h in enumerate(h2) if h.startswith(claim)][0] > (i and [
            j for j, h in enumerate(h2) if h.startswith(CLAIMS[i - 1])][0])
    assert not any(h.startswith("Intrinsic dimension") for h in h2)  # its verdict row says "not measured"
    assert "not measured" in section(md, "Verdicts")
    h3 = headings(md, 3)
    for part in PARTS:
        assert any(h.startswith(part) for h in h3), part
    contents = md.split("## Contents")[1].split("\n## ")[0]
    for h in h2[1:] + h3:
        assert f"[{h}](#" in contents, h
    head = md.split("## ")[0]
    for key in ("model", "task", "budget", "seeds", "device", "suite"):
        assert f"**{key}**" in head


def section(md: str, title: str) -> str:
    return md.split(f"## {title}")[1].split("\n## ")[0]


def test_report_numbers_equal_the_analysis_tables(reported):
    """The tiny study learned (full FT well above the base, LoRA between), so its sections draw conclusions; every
    number they state is the analysis table's: scores and paired differences per rank, truncation per scope, φ
    against the random control, intruder rates and update sizes, forgetting and CKA."""
    md = (reported / "report" / "report.md").read_text()
    a = reported / "analysis"
    runs = pd.read_csv(a / "runs.csv").set_index("label")
    full, base = runs.test_accuracy["full FT"], runs.test_accuracy["frozen base"]
    assert full - base > 0.3 and all(base < runs.test_accuracy[f"LoRA r={r}"] < full for r in (1, 2, 4))

    reach = pd.read_csv(a / "reach.csv")
    text = section(md, "Does LoRA reach full finetuning")
    assert f"full FT reaches {full:.3f}" in text and f"the frozen base {base:.3f}" in text
    for r in reach[reach.arm == "lora"].itertuples():
        assert runs.test_accuracy[f"LoRA r={int(r.rank)}"] == pytest.approx(r.mean)
        assert (f"r = {int(r.rank)}: {r.diff:+.3f} [{r.diff_ci_low:+.3f}, {r.diff_ci_high:+.3f}], "
                f"TOST p = {r.p_tost:.2g} ({r.verdict})" in text), r.rank

    trunc = pd.read_csv(a / "truncation.csv")
    text = section(md, "Does full finetuning's update survive")
    for scope, rows in trunc.groupby("scope", sort=False):
        assert f"({scope}): " + ", ".join(f"k = {t.k} {t.mean:.3f} [{t.ci_low:.3f}, {t.ci_high:.3f}]"
                                         for t in rows.itertuples()) + f", against {full:.3f} untruncated" in text

    pooled = pd.read_csv(a / "similarity_pooled.csv")
    sim = pd.read_csv(a / "similarity.csv")
    ranks = sim[(sim.basis == "A") & (sim.compares == "ranks") & (sim.small == 1) & (sim.large == 4)]
    text = section(md, "Do LoRA ranks share directions")
    assert f"LoRA r = 1 vs r = 4: φ(1, 1) from A is {ranks.phi_1_1.mean():.2f} [" in text
    assert not pooled.empty

    intr = pd.read_csv(a / "intruders.csv")
    at = intr[(intr.eps == 0.5) & (intr.kind == "run") & (intr.scope == "targets:lora")].set_index("label")
    text = section(md, "Do low-rank updates bring in intruder dimensions")
    for label in ("full FT", "LoRA r=1", "LoRA r=2", "LoRA r=4"):
        row = at.loc[label]
        assert (f"{label} {row.intruders:.1f} intruders ({100 * row.rate:.1f} %, ‖ΔW‖/‖W‖ {row.rel_update:.3g})"
                in text), label

    forget = pd.read_csv(a / "forgetting.csv").set_index("label")
    text = section(md, "Does LoRA forget less")
    assert f"full FT {forget.forgetting_mean['full FT']:+.3f} [" in text
    assert "Debiased linear CKA to the base's features on the held-out texts" in text
    assert ", ".join(f"{k} {forget.cka[k]:.3f}" for k in ["full FT", "LoRA r=1", "LoRA r=2", "LoRA r=4"]) in text


def test_figures_are_numbered_and_captioned_with_their_scope(reported):
    out = reported / "report"
    md = (out / "report.md").read_text()
    drawn = json.loads((reported / "analysis" / "analysis.json").read_text())["figures"]
    assert sorted(drawn) == sorted(FIGURES)
    for f in FIGURES:
        assert (out / "figures" / f"{f}.png").exists() and (out / "figures" / f"{f}.pdf").exists(), f
    shown = re.findall(r"!\[Figure (\d+)\]\(figures/(\w+)\.png\)", md)
    assert [int(n) for n, _ in shown] == list(range(1, len(FIGURES) + 1))
    assert sorted(name for _, name in shown) == sorted(FIGURES)
    captions = re.findall(r"^\*Figure (\d+)\. (.+)\*$", md, flags=re.M)
    assert [int(n) for n, _ in captions] == list(range(1, len(FIGURES) + 1))
    for _, text in captions:
        assert "scope:" in text and ("seed" in text) and text.count(". ") == 0, text  # one sentence, scope given
    page = (out / "report.html").read_text()
    assert len(re.findall(r"<figcaption><b>Figure \d+\.</b>", page)) == len(FIGURES)
    assert re.findall(r"\*\*Table (\d+)\.\*\*", md) == [str(i) for i in range(1, md.count("**Table ") + 1)]


def test_every_computed_table_is_shipped_as_csv_markdown_and_latex(reported):
    tables = reported / "report" / "tables"
    computed = json.loads((reported / "analysis" / "analysis.json").read_text())["tables"]
    for name in ("full_energy_in_lora", "forgetting_vs_full", "intruders", "truncation", "training_curve",
                 "learning_rates", "similarity_pooled"):
        assert name in computed
    for name in computed:
        try:
            if pd.read_csv(reported / "analysis" / f"{name}.csv").empty:
                continue
        except pd.errors.EmptyDataError:  # a measure the study cannot give (no intruder scaling here)
            continue
        for ext in ("csv", "md", "tex"):
            assert (tables / f"{name}.{ext}").exists(), f"{name}.{ext}"
    for name in ("tradeoff_cost", "tradeoff_formulas", "tradeoff_quality", "forgetting_per_task", "intruders",
                 "full_energy_in_lora", "trained_vs_truncated", "amplification"):
        for f in (f"{name}.md", f"{name}.tex", f"{name}_formatted.csv"):
            assert (tables / f).exists(), f
    tex = (tables / "tradeoff_cost.tex").read_text()
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex
    # the runs' measured times live in files of their own
    runs = pd.read_csv(tables / "runs.csv")
    assert "wall_time_s" not in runs and "mean_step_s" not in runs
    assert {"member", "wall_time_s", "mean_step_s"} <= set(pd.read_csv(tables / "runs_timings.csv").columns)


def test_cost_and_quality_tables_keep_formulas_apart_and_time_every_method(reported):
    tables = reported / "report" / "tables"
    cost = pd.read_csv(tables / "tradeoff_cost_formatted.csv")
    quality = pd.read_csv(tables / "tradeoff_quality_formatted.csv")
    formulas = pd.read_csv(tables / "tradeoff_formulas_formatted.csv")
    assert len(cost.columns) <= 12 and len(quality.columns) <= 8
    # training memory in its parts, each counted from the run's tensors, beside their sum
    assert {"parameters", "gradients", "optimizer state", "activations", "training memory"} <= set(cost.columns)
    assert not any("formula" in c or "predict" in c for c in list(cost.columns) + list(quality.columns))
    assert sum("(formula)" in c for c in formulas.columns) == 2
    latency = [c for c in cost.columns if c.startswith("latency b=")]
    assert latency
    for label in ("frozen base", "full FT"):  # measured in those runs, so shown
        row = cost[cost.method.str.startswith(label)].iloc[0]
        assert all(row[c].endswith(" ms") for c in latency), row.to_dict()
    md = (reported / "report" / "report.md").read_text()
    assert "Every column is measured" not in md and "Median latency of the same run before and after merging" in md
    assert "Latencies of different runs are not compared with each other" in md  # timed at other moments


def test_tradeoff_counts_and_optimizer_bytes_are_exact(reported):
    t = pd.read_csv(reported / "report" / "tables" / "tradeoff.csv")
    runs = {json.loads(p.read_text())["member"]: json.loads(p.read_text())
            for p in (reported / "runs").glob("*/summary.json")}
    from lora_study.artifacts import member_id
    from lora_study.config import ModelConfig
    from lora_study.models.structure import block_linears
    model = load_model(ModelConfig(source="tiny")).model
    shapes = {n: (m.out_features, m.in_features) for n, m in block_linears(model).items()}
    head = 16 * 2 + 2
    swept = t[t.axis == "rank"]
    assert list(swept.label) == ["LoRA r=1", "LoRA r=2", "LoRA r=4"]
    for _, row in swept.iterrows():
        s = runs[member_id(row.arm, 0, "rank", int(row["value"]))]
        analytic = sum(int(row["rank"]) * (shapes[n][0] + shapes[n][1]) for n in s["lora_targets"]) + head
        assert row.trainable_params == analytic
        n_tensors = 2 * len(s["lora_targets"]) + 2
        assert row.optimizer_state_bytes == 8 * analytic + 4 * n_tensors  # exp_avg, exp_avg_sq, step: nothing else
    full = t[t.reference].iloc[0]
    assert full.label == "full FT" and t[t.baseline].label.tolist() == ["frozen base"]
    assert full.optimizer_state_bytes == 8 * full.trainable_params + 4 * len(list(model.parameters()))


def test_amplification_is_pivoted_beside_hu_et_al(reported):
    a = pd.read_csv(reported / "report" / "tables" / "amplification_formatted.csv")
    raw = pd.read_csv(reported / "analysis" / "amplification.csv")
    per_kind = a[a.matrix != "W_q, W_v"]
    assert len(per_kind) == raw.groupby(["kind", "r"]).ngroups  # one row per module kind and r
    assert len(a) - len(per_kind) == 3  # and W_q, W_v pooled, per r
    assert a.r.dtype.kind == "i" and sorted(set(a.r)) == [1, 2, 4]
    hu = [c for c in a.columns if c.startswith("Hu et al.")]
    assert len(hu) == 1
    at4 = a[(a.r == 4) & (a.matrix == "W_q")][hu[0]].iloc[0]
    assert at4.startswith("0.32 / 21.67 / 0.02") and "21.6" in at4
    assert (a[a.r != 4][hu[0]] == "—").all()
    assert {"W top-r dirs", "random dirs", "LoRA: ΔW dirs", "LoRA: factor (median)", "full FT: factor (median)"} <= \
        set(a.columns)  # medians over seeds: one seed's near-zero denominator cannot carry the row


def test_learning_vs_forgetting_over_checkpoints(reported):
    curve = pd.read_csv(reported / "analysis" / "training_curve.csv")
    finetuned = curve[~curve.baseline]
    assert set(finetuned.member) == {"full_s0", "lora_r1_s0", "lora_r2_s0", "lora_r4_s0"}
    assert (finetuned.groupby("member").step.apply(list) == pd.Series({m: [30, 60] for m in finetuned.member})).all()
    summary = json.loads((reported / "runs" / "lora_r2_s0" / "summary.json").read_text())
    last = curve[(curve.member == "lora_r2_s0") & (curve.step == 60)].iloc[0]
    from lora_study.analysis import load_study
    from lora_study.analysis.measures.forgetting import informative
    study = load_study(reported)
    tasks = summary["heldout"]["tasks"]
    keep = [t for t in tasks if informative(study, t)[0]]
    assert keep == ["bbc_topic", "subjectivity"]  # political_party's base probe sits at chance: no drop to measure
    assert last.forgetting_mean == pytest.approx(sum(tasks[t]["forgetting"] for t in keep) / len(keep))


def test_learning_rate_heatmap_reads_the_study_evidence(reported):
    from conftest import LR_EVIDENCE
    t = pd.read_csv(reported / "analysis" / "learning_rates.csv")
    assert len(t) == sum(len(v) for v in LR_EVIDENCE.values())
    best = t[t.best].set_index("label").lr.to_dict()
    assert best == {"frozen base": 0.1, "full FT": 0.001, "LoRA r=1": 0.005, "LoRA r=4": 0.005}
    md = (reported / "report" / "report.md").read_text()
    assert "LoRA r=1 0.005 (0.560)" in md


def test_html_is_self_contained(reported):
    page = (reported / "report" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(FIGURES)
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)""", page)
    assert all(r.startswith(("data:", "#")) for r in refs), [r for r in refs if not r.startswith("data:")][:3]
    ids = set(re.findall(r'id="([^"]+)"', page))
    assert {r[1:] for r in refs if r.startswith("#")} <= ids  # every contents link lands on a heading
    assert "http://" not in page and "https://" not in page


def _digests(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_report_twice_writes_the_same_bytes_but_the_timings(reported, tmp_path):
    before = _digests(reported / "analysis")
    r = cli("lora-study-report", str(reported), "--out", str(tmp_path / "again"))
    assert r.returncode == 0, r.stderr[-3000:]
    first, again = _digests(reported / "report"), _digests(tmp_path / "again")
    assert set(first) == set(again) and "timings.json" in first
    assert {k for k in first if first[k] != again[k]} <= {"timings.json"}
    after = _digests(reported / "analysis")
    assert {k for k in before if before[k] != after.get(k)} <= {"timings.json"}
    timings = json.loads((tmp_path / "again" / "timings.json").read_text())
    assert timings["report_seconds"] > 0 and timings["analysis_seconds"] > 0
    assert "analysis_seconds" not in json.loads((reported / "analysis" / "analysis.json").read_text())
    assert not any(b"CreationDate" in (tmp_path / "again" / "figures" / f).read_bytes()
                   for f in (f"{n}.pdf" for n in FIGURES))


def test_a_report_rewrites_its_own_files_and_keeps_the_reports_beside_it(reported, tmp_path):
    """`make study` writes the default report into results/reference/, where the presets' reports live in
    subfolders: those stay, while a stale figure of the earlier report there does not."""
    from lora_study.analysis import load_study
    from lora_study.analysis.report import report
    out = tmp_path / "reference"
    shutil.copytree(reported / "report", out)
    (out / "preset" / "figures").mkdir(parents=True)
    (out / "preset" / "report.md").write_text("a preset's report")
    (out / "preset" / "figures" / "x.png").write_bytes(b"png")
    (out / "figures" / "stale.png").write_bytes(b"old")
    (out / "notes.txt").write_text("kept")
    report(load_study(reported), out)
    assert (out / "preset" / "report.md").read_text() == "a preset's report"
    assert (out / "preset" / "figures" / "x.png").read_bytes() == b"png" and (out / "notes.txt").exists()
    assert not (out / "figures" / "stale.png").exists()
    fresh = _digests(reported / "report")
    again = {k: v for k, v in _digests(out).items() if not k.startswith("preset/") and k != "notes.txt"}
    assert set(again) == set(fresh) and {k for k in fresh if fresh[k] != again[k]} <= {"timings.json"}


def test_study_missing_full_ft_still_reports(study_copy):
    from lora_study.analysis.report import main
    idx = json.loads((study_copy / "study.json").read_text())
    from lora_study import methods
    idx["members"] = [m for m in idx["members"] if not methods.get(m["method"]).is_reference]
    (study_copy / "study.json").write_text(json.dumps(idx))
    main([str(study_copy)])
    md = (study_copy / "report" / "report.md").read_text()
    assert "has no run of full finetuning" in md
    assert "lacks full finetuning" in md
    assert not (study_copy / "report" / "figures" / "lr_heatmap.png").exists()  # no search evidence, no heatmap


@pytest.mark.parametrize("name", ["spectra.ipynb", "report.ipynb"])
def test_notebooks_run_top_to_bottom(reported, name, monkeypatch, tmp_path):
    import nbformat
    from nbclient import NotebookClient
    study = tmp_path / "tiny"  # the notebooks read the study; a copy keeps the report above as it was written
    shutil.copytree(reported, study, ignore=shutil.ignore_patterns("report"))
    monkeypatch.setenv("LORA_STUDY_DIR", str(study))
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= (6 if name == "report.ipynb" else 2)
