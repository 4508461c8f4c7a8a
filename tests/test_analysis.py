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


def test_run_labels_sort_by_method_then_rank_numerically():
    from analysis.study import label_key
    labels = ["LoRA r=16", "full FT", "subspace SAID d=10", "LoRA r=2", "frozen base", "subspace DID d=100",
              "subspace DID d=32", "QLoRA r=4"]
    assert sorted(labels, key=label_key) == ["frozen base", "full FT", "LoRA r=2", "LoRA r=16", "QLoRA r=4",
                                             "subspace DID d=32", "subspace DID d=100", "subspace SAID d=10"]


def test_forgetting_difference_se_known_answer():
    import math

    import pandas as pd

    from analysis.forgetting import forgetting_difference_se
    f = pd.DataFrame({"method": ["full", "lora"], "heldout_a": [0.5, 0.6], "heldout_b": [0.9, 0.8],
                      "probe_n_test": [100, 100]})
    assert math.isclose(forgetting_difference_se(f), math.sqrt(2 * (0.25 + 0.09) / 100) / 2)
    assert forgetting_difference_se(f.drop(columns="probe_n_test")) is None
    assert forgetting_difference_se(f.assign(heldout_a=[46.7, 40.0])) is None  # a perplexity is no probability


def test_latency_batches_are_read_from_the_columns():
    import pandas as pd

    from analysis.tradeoff import latency_batches
    t = pd.DataFrame(columns=["latency_merged_batch4_s", "latency_unmerged_batch1_s", "latency_plain_batch4_s", "x"])
    assert latency_batches(t) == [1, 4]
    assert latency_batches(pd.DataFrame(columns=["test_accuracy"])) == []


def test_rank_finding_uses_the_runs_test_size_for_its_tolerance():
    import pandas as pd

    from analysis.findings import rank_finding
    runs = pd.DataFrame({"method": ["none", "full", "lora"], "rank": [None, None, 8], "test_accuracy": [0.0, 0.7, 0.75],
                         "trainable_params": [0, 100, 10], "n_test": [100, 100, 100]})
    txt = rank_finding(runs, pd.DataFrame())
    assert "(0.092)" in txt and "frozen base (nothing trained) 0.000" in txt  # 2·sqrt(0.7·0.3/100)
    assert "(0.029)" in rank_finding(runs.assign(n_test=1000), pd.DataFrame())
