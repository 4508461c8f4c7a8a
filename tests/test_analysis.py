"""The analysis CLI and loader on a tiny-model study, and its handling of bad input."""
import json

import pandas as pd
import pytest
import torch

from conftest import cli
from analysis import load_study
from lora_study.artifacts import ArtifactError


def test_analyze_cli_writes_tables_and_figures(study_copy):
    r = cli("lora-study-analyze", str(study_copy))
    assert r.returncode == 0, r.stderr[-2000:]
    out = study_copy / "analysis"
    for t in ("runs", "spectra", "truncation", "similarity", "amplification", "intruders", "full_energy_in_lora",
              "forgetting"):
        assert (out / f"{t}.csv").exists() and (out / f"{t}.parquet").exists(), t
    for f in ("spectra", "cumulative_energy", "rank90_heatmap", "similarity", "intruders", "truncation",
              "forgetting_vs_rank", "pareto"):
        assert (out / f"{f}.png").stat().st_size > 1000 and (out / f"{f}.pdf").exists(), f
    spectra = pd.read_parquet(out / "spectra.parquet")
    lora = spectra[spectra.method == "lora"]
    assert (lora.rank90 <= lora["rank"]).all()  # a rank-r update has at most r directions
    assert set(spectra.kind) == {"query", "key", "value", "attn_out", "ffn_in", "ffn_out"}
    runs = pd.read_parquet(out / "runs.parquet")
    assert set(runs.member) == {"none_s0", "full_s0", "lora_r1_s0", "lora_r2_s0", "lora_r4_s0"}


def test_load_study_api(tiny_study):
    st = load_study(tiny_study)
    assert {r.member for r in st.runs} == {"none_s0", "full_s0", "lora_r1_s0", "lora_r2_s0", "lora_r4_s0"}
    mods = st.modules("full_s0")
    name = mods.module.iloc[0]
    d = st.delta("full_s0", name)
    s = st.spectrum("full_s0")[name]
    assert torch.allclose(torch.linalg.svdvals(d), s, atol=1e-5)
    assert st.base_weight(name).shape == d.shape
    assert len(st.metrics("lora_r2_s0")) > 0
    assert st.lora_ranks() == [1, 2, 4]


def test_not_a_study_is_one_sentence(tmp_path):
    r = cli("lora-study-analyze", str(tmp_path))
    assert r.returncode == 2 and "is not a study directory" in r.stderr and "Traceback" not in r.stderr
    with pytest.raises(ArtifactError):
        load_study(tmp_path)


def test_study_without_complete_runs(study_copy):
    for s in study_copy.glob("runs/*/summary.json"):
        s.unlink()
    r = cli("lora-study-analyze", str(study_copy))
    assert r.returncode == 2 and "has no complete runs" in r.stderr


def test_corrupt_delta_is_skipped_and_the_rest_analysed(study_copy):
    p = study_copy / "runs" / "lora_r2_s0" / "delta.safetensors"
    p.write_bytes(p.read_bytes()[:100])  # cut short
    r = cli("lora-study-analyze", str(study_copy))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "skipped lora_r2_s0" in r.stderr and "unreadable" in r.stderr
    runs = pd.read_csv(study_copy / "analysis" / "runs.csv")
    assert "lora_r2_s0" not in set(runs.member) and "lora_r4_s0" in set(runs.member)


def test_delta_of_a_module_missing_from_the_base_is_skipped(study_copy):
    from safetensors.torch import load_file, save_file
    for name in ("delta.safetensors", "spectrum.safetensors"):
        p = study_copy / "runs" / "lora_r4_s0" / name
        t = load_file(p)
        t["bert.encoder.layer.9.attention.self.query"] = next(iter(t.values())).clone()
        save_file(t, p, metadata={"schema_version": "1"})
    r = cli("lora-study-analyze", str(study_copy))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "skipped lora_r4_s0" in r.stderr and "has no weight in the base model" in r.stderr
    meta = json.loads((study_copy / "analysis" / "analysis.json").read_text())
    assert "lora_r4_s0" in meta["skipped"] or "lora_r4_s0" in r.stderr
