"""The report of a tiny-model study that learned: sections, figures, every number of its findings against the
analysis tables, measured tradeoff table, self-contained HTML, a study missing a method, and the notebooks executed
top to bottom."""
import json
import re
import shutil

import pandas as pd
import pytest

from conftest import ROOT, cli, load_model

SECTIONS = ["Tradeoff table", "Does LoRA reach full finetuning", "Spectra of ΔW", "Cumulative energy",
            "Rank at 90 % energy", "Subspace similarity", "Intruder dimensions", "Amplification", "Merge and latency",
            "Forgetting on held-out tasks", "Learning vs forgetting", "Intrinsic dimension"]
FIGURES = ["truncation", "spectra", "cumulative_energy", "rank90_heatmap", "similarity", "intruders",
           "forgetting_vs_rank", "pareto"]


@pytest.fixture(scope="module")
def reported(tiny_study, tmp_path_factory):
    """A copy of the tiny study reported by the console script: lora-study-report's one command-line case."""
    dst = tmp_path_factory.mktemp("rep") / "tiny"
    shutil.copytree(tiny_study, dst)
    r = cli("lora-study-report", str(dst))
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"-> {dst / 'report' / 'report.html'}" in r.stdout
    return dst


def section(md: str, title: str) -> str:
    return md.split(f"## {title}")[1].split("\n## ")[0]


def test_report_numbers_equal_the_analysis_tables(reported):
    """Every number the findings state is the analysis table's, and this study's findings draw conclusions (its full
    finetune learned): a gain kept per rank, truncation compared, φ against the control, intruders by run, mean
    forgetting and CKA by run, and the intruder-forgetting correlation."""
    md = (reported / "report" / "report.md").read_text()
    a = reported / "analysis"
    runs = pd.read_csv(a / "runs.csv").set_index("label")
    full, base = runs.test_accuracy["full FT"], runs.test_accuracy["frozen base"]
    lora = {int(r.value): r.test_accuracy for r in runs[runs.arm == "lora"].itertuples()}

    rank = section(md, "Does LoRA reach full finetuning")
    assert f"Full finetuning reaches {full:.3f} test accuracy, the frozen base with a trained head {base:.3f}." in rank
    assert "no conclusion on rank" not in rank
    assert "Share of full finetuning's gain over the base kept by LoRA: " + ", ".join(
        f"r={r} {100 * (acc - base) / (full - base):.0f} %" for r, acc in sorted(lora.items())) + "." in rank
    trunc = pd.read_csv(a / "truncation.csv")
    own = trunc[(trunc.scope == "finetuned_rest") & (trunc.k > 0)].drop_duplicates("k")
    assert "Truncating every ΔW of the full finetune to rank k gives " + ", ".join(
        f"k={r.k} {r.truncated_full_accuracy:.3f}" for r in own.itertuples()) in rank
    better = sum(lora[r.k] > r.truncated_full_accuracy for r in own.itertuples())
    assert f"Training at rank k beats truncating full finetuning to rank k at {better} of {len(own)} ranks." in rank

    sim = pd.read_csv(a / "similarity.csv")
    real, rnd = sim[sim.kind != "random"], sim[sim.kind == "random"]
    assert (f"φ(1, 1) averaged over layers and module kinds is {real.phi_1_1.mean():.2f} against "
            f"{rnd.phi_1_1.mean():.3f} for the random Gaussian control") in section(md, "Subspace similarity")

    intr = pd.read_csv(a / "intruders.csv")
    at = intr[intr.eps == 0.5].set_index("label").intruders
    assert ("At ε = 0.5, intruder dimensions summed over modules: " + ", ".join(
        f"{k} {at[k]}" for k in ["full FT", "LoRA r=1", "LoRA r=2", "LoRA r=4"]) + ".") in section(md, "Intruder dimensions")

    forget = pd.read_csv(a / "forgetting.csv").set_index("label")
    text = section(md, "Forgetting on held-out tasks")
    assert (f"full FT {forget.forgetting_mean['full FT']:+.3f}; " + ", ".join(
        f"LoRA r={r} {forget.forgetting_mean[f'LoRA r={r}']:+.3f}" for r in (1, 2, 4)) + ".") in text
    assert ("Linear CKA to the base's features on held-out text: " + ", ".join(
        f"{k} {forget.cka[k]:.3f}" for k in ["full FT", "LoRA r=1", "LoRA r=2", "LoRA r=4"]) + ".") in text
    corr = json.loads((a / "analysis.json").read_text())["intruders_vs_forgetting"]
    assert corr["rho"] is not None
    assert (f"Spearman correlation between intruder count (ε = 0.5) and forgetting over 4 runs: ρ = {corr['rho']:.2f} "
            f"(p = {corr['p']:.2g}") in text
    # the tables shipped with the report are the analysis's
    shipped = pd.read_csv(reported / "report" / "tables" / "tradeoff.csv")
    assert shipped.equals(pd.read_csv(a / "tradeoff.csv"))
    assert (reported / "report" / "tables" / "tradeoff.md").read_text().strip() in md


def test_report_has_every_section_and_figure(reported):
    out = reported / "report"
    md = (out / "report.md").read_text()
    for s in SECTIONS:
        assert f"## {s}" in md, s
    for f in FIGURES:
        assert (out / "figures" / f"{f}.png").exists() and (out / "figures" / f"{f}.pdf").exists(), f
        assert f"figures/{f}.png" in md
    for t in ("tradeoff.csv", "tradeoff.md", "tradeoff.tex"):
        assert (out / "tables" / t).exists()
    tex = (out / "tables" / "tradeoff.tex").read_text()
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex
    head = md.split("## ")[0]
    for key in ("model", "task", "budget", "seeds", "device", "suite"):
        assert f"**{key}**" in head


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


def test_html_is_self_contained(reported):
    page = (reported / "report" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(FIGURES)
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)""", page)
    assert all(r.startswith("data:") for r in refs), [r for r in refs if not r.startswith("data:")][:3]
    assert "http://" not in page and "https://" not in page


def test_study_missing_full_ft_still_reports(study_copy):
    from analysis.report import main
    idx = json.loads((study_copy / "study.json").read_text())
    from lora_study import methods
    idx["members"] = [m for m in idx["members"] if not methods.get(m["method"]).is_reference]
    (study_copy / "study.json").write_text(json.dumps(idx))
    main([str(study_copy)])
    md = (study_copy / "report" / "report.md").read_text()
    assert "has no run of full finetuning" in md
    assert ("The study lacks full finetuning or LoRA runs, so LoRA's accuracy is not compared with full "
            "finetuning's.") in section(md, "Does LoRA reach full finetuning")
    assert "full FT" not in pd.read_csv(study_copy / "report" / "tables" / "tradeoff.csv").label.tolist()


@pytest.mark.parametrize("name", ["spectra.ipynb", "report.ipynb"])
def test_notebooks_run_top_to_bottom(reported, name, monkeypatch):
    import nbformat
    from nbclient import NotebookClient
    monkeypatch.setenv("LORA_STUDY_DIR", str(reported))
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)
