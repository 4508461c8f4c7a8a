"""The report of a tiny-model study: sections, figures, measured tradeoff table, self-contained HTML,
a study missing a method, and the notebooks executed top to bottom."""
import json
import re
import shutil

import pandas as pd
import pytest

from conftest import ROOT, cli, load_model

SECTIONS = ["Verdicts", "Tradeoff table", "Does LoRA reach full finetuning", "Does full finetuning's update survive",
            "Spectra of ΔW", "Cumulative energy",
            "Rank at 90 % energy", "Subspace similarity", "Intruder dimensions", "Amplification", "Merge and latency",
            "Forgetting on held-out tasks", "Learning vs forgetting", "Intrinsic dimension"]
FIGURES = ["reach", "truncation", "spectra", "cumulative_energy", "rank90_heatmap", "similarity", "similarity_layers",
           "intruders", "forgetting_vs_rank", "pareto"]


@pytest.fixture(scope="module")
def reported(tiny_study, tmp_path_factory):
    dst = tmp_path_factory.mktemp("rep") / "tiny"
    shutil.copytree(tiny_study, dst)
    r = cli("lora-study-report", str(dst))
    assert r.returncode == 0, r.stderr[-3000:]
    return dst


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
    idx = json.loads((study_copy / "study.json").read_text())
    from lora_study import methods
    idx["members"] = [m for m in idx["members"] if not methods.get(m["method"]).is_reference]
    (study_copy / "study.json").write_text(json.dumps(idx))
    r = cli("lora-study-report", str(study_copy))
    assert r.returncode == 0, r.stderr[-3000:]
    md = (study_copy / "report" / "report.md").read_text()
    assert "has no run of full finetuning" in md
    assert "lacks full finetuning" in md


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
