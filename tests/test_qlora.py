"""QLoRA takes part in every rank analysis that LoRA does. bitsandbytes needs CUDA, so the test stubs the 4-bit
quantisation away (QLoRA then trains exactly as LoRA does, on the fp32 base); everything downstream — study
planning with per-rank learning rates, ΔW, spectra, φ, truncation, intruders, amplification, forgetting, the
tradeoff table — is the real code."""
import json

import pytest

from conftest import STUDY_ARGS, study_in_process
from lora_study.methods.lora import Lora, QLora


@pytest.fixture()
def qlora_without_quantisation(monkeypatch):
    monkeypatch.setattr(QLora, "check_device", lambda self, cfg, device: None)
    monkeypatch.setattr(QLora, "load_options", lambda self, cfg, device: {})  # no 4-bit NF4 base
    monkeypatch.setattr(QLora, "prepare", Lora.prepare)  # no prepare_model_for_kbit_training
    monkeypatch.setattr(QLora, "to_device", Lora.to_device)


def test_qlora_takes_part_in_every_rank_analysis(tmp_path, qlora_without_quantisation):
    from lora_study.analysis import load_study
    from lora_study.analysis.analyze import analyze
    code = study_in_process(*STUDY_ARGS, "study.methods=[none,full,lora,qlora]", "study.ranks=[1,2]",
                            "+study.lr.qlora=0.004", "study.lr_by_rank={1:0.006}",
                            f"study.root={tmp_path}", "study.name=q")
    assert code == 0
    index = {m["id"]: m for m in json.loads((tmp_path / "q" / "study.json").read_text())["members"]}
    assert index["qlora_r1_s0"]["lr"] == 0.006 and index["qlora_r2_s0"]["lr"] == 0.004  # per-rank rates, as LoRA
    ctx = analyze(load_study(tmp_path / "q"), tmp_path / "q" / "analysis")
    for table in ("spectra", "similarity", "reach", "smallest_rank", "trained_vs_truncated", "intruders",
                  "amplification", "full_energy_in_lora", "forgetting", "forgetting_vs_full", "tradeoff"):
        t = ctx.table(table)
        column = "arm" if "arm" in t else "method"
        assert {"lora", "qlora"} <= set(t[column].dropna()), table
    versus = ctx.table("trained_vs_truncated")  # QLoRA at rank k beside full FT truncated to rank k
    assert versus[versus.arm == "qlora"]["diff"].notna().all() and len(versus[versus.arm == "qlora"]) == 6
    assert {"QLoRA r=1", "QLoRA r=2"} <= set(ctx.table("runs").label)
