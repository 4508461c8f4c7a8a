"""Weights & Biases logging, offline: a tiny run and a tiny study read back from wandb's own files; disabled mode
leaves nothing."""
from pathlib import Path

import pytest

from conftest import TINY, run_tiny, study_in_process
from lora_study.artifacts import RunDir, StudyDir
from wandb_offline import offline_runs, read_run

pytest.importorskip("wandb")

QUICK = ["heldout=none", "run.latency=false", "run.truncation_ranks=[]"]


def files(d: Path):
    return sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())


def check_against_artifacts(run, out: Path):
    """Every metrics.jsonl record is in the wandb history at its step; the summary holds summary.json's scalars."""
    rd = RunDir(out)
    logged = [r for r in rd.metrics() if r["split"] in ("train", "validation")]
    assert {r["split"] for r in logged} == {"train", "validation"}
    for rec in logged:
        row = run.at_step(rec["step"])
        for k, v in rec.items():
            if k not in ("step", "split") and v is not None:
                assert row[f"{rec['split']}/{k}"] == pytest.approx(v), (rec, row)
    s = rd.summary()
    assert run.summary["metrics/test_accuracy"] == s["metrics"]["test_accuracy"]
    assert run.summary["status"] == "complete"
    # the tradeoff table's columns
    assert run.summary["params/trainable"] == s["params"]["trainable"]
    assert run.summary["memory/optimizer_state_bytes"] == s["memory"]["optimizer_state_bytes"]
    assert run.summary["time/mean_step_s"] == pytest.approx(s["time"]["mean_step_s"])
    assert run.summary["storage/bytes"] == s["storage"]["bytes"]


def test_offline_run_holds_history_summary_and_config(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    summary, _ = run_tiny(tmp_path, ["logger=wandb", "method=lora", "method.rank=2", "train.log_every=2",
                                     "study.name=wb_single", *QUICK])
    found = offline_runs(tmp_path)
    assert len(found) == 1
    run = read_run(found[0])
    assert run.group == "wb_single" and run.project == "lora-study"
    assert run.config["method"]["name"] == "lora" and run.config["method"]["rank"] == 2
    assert [r["_step"] for r in run.history if "train/loss" in r] == [1, 2, 4, 6]
    assert [r["_step"] for r in run.history if "validation/accuracy" in r] == [3, 6]
    check_against_artifacts(run, tmp_path)
    assert RunDir(tmp_path).check_complete() is None


def test_study_is_a_group_with_one_run_per_member(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    code = study_in_process(*TINY, *QUICK, "logger=wandb", "study.methods=[none,lora]", "study.ranks=[2]",
                            f"study.root={tmp_path}", "study.name=wb_study")
    assert code == 0
    study = StudyDir(tmp_path / "wb_study")
    members = [m["id"] for m in study.index()["members"]]
    assert members == ["none_s0", "lora_r2_s0"]
    for member in members:
        found = offline_runs(study.run_path(member))
        assert len(found) == 1, member
        run = read_run(found[0])
        assert (run.group, run.name) == ("wb_study", member)
        assert run.config["method"]["name"] == member.split("_")[0]
        assert run.config["method"].get("rank") == (2 if member.startswith("lora") else None)
        check_against_artifacts(run, study.run_path(member))


def test_disabled_mode_leaves_no_files(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    run_tiny(out, ["logger=wandb", "method=none", *QUICK])
    assert files(tmp_path) == ["run/.hydra/config.yaml", "run/metrics.jsonl", "run/predictions.safetensors",
                               "run/summary.json"]
