"""Paired studies on the tiny model: completion, index, resume (in-process), resume after SIGKILL (the command line's
case: a killed process), a member that fails on bad config or diverges while the others complete, launchers; the
kill-and-resume and failing-member cases also with members side by side (hydra/launcher=parallel, one thread each)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import BIN, ROOT, TINY, study_in_process

STUDY = TINY + ["study.ranks=[1,2]", "run.truncation_ranks=[1]"]


def study_cmd(root: Path, *extra):
    return [str(BIN / "lora-study-study"), *STUDY, f"study.root={root}", "study.name=t", *extra]


def run_study(root, *extra, timeout=900):
    return subprocess.run(study_cmd(root, *extra), cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ})


def study_here(root: Path, *extra) -> int:
    """The study in this process (Hydra's basic launcher runs the members here); its exit code."""
    return study_in_process(*STUDY, f"study.root={root}", "study.name=t", *extra)


def index(root):
    return json.loads((root / "t" / "study.json").read_text())


def mtimes(root):
    return {p.parent.name: p.stat().st_mtime_ns for p in (root / "t" / "runs").glob("*/summary.json")}


def test_study_runs_every_member_then_resumes_without_redoing(tmp_path, capsys):
    assert study_here(tmp_path) == 0
    idx = index(tmp_path)
    assert [m["id"] for m in idx["members"]] == ["none_s0", "full_s0", "lora_r1_s0", "lora_r2_s0"]
    assert all(m["status"] == "complete" for m in idx["members"])
    assert idx["schema_version"] == 2 and idx["shared"]["budget"]["max_steps"] == 6
    lr = {m["id"]: m["lr"] for m in idx["members"]}
    planned = compose_study().study.lr
    assert lr == {"none_s0": planned.none, "full_s0": planned.full, "lora_r1_s0": planned.lora, "lora_r2_s0": planned.lora}
    for m in idx["members"]:  # each run trained at its planned rate
        assert json.loads((tmp_path / "t" / m["dir"] / "summary.json").read_text())["lr"] == m["lr"]
    assert {m["alpha"] for m in idx["members"] if m["method"] == "lora"} == {2.0, 4.0}  # alpha = 2r
    before = mtimes(tmp_path)
    capsys.readouterr()
    assert study_here(tmp_path) == 0
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if line.startswith("skip ")] == [
        f"skip {m}: complete" for m in ("none_s0", "full_s0", "lora_r1_s0", "lora_r2_s0")]
    assert mtimes(tmp_path) == before  # nothing redone

    # changing a shared setting for the same study name is refused before any work
    assert study_here(tmp_path, "train.max_steps=7") == 2
    assert "different budget settings" in capsys.readouterr().err
    assert mtimes(tmp_path) == before


def compose_study():
    from conftest import compose
    return compose(STUDY, "study")


SIDE_BY_SIDE = pytest.mark.parametrize("launcher", [[], ["hydra/launcher=parallel"]], ids=["basic", "parallel"])


@SIDE_BY_SIDE
def test_kill_and_resume_gives_the_same_results(tmp_path, launcher):
    ref = tmp_path / "ref"
    assert run_study(ref, *launcher).returncode == 0
    killed = tmp_path / "killed"
    proc = subprocess.Popen(study_cmd(killed, *launcher), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ}, start_new_session=True)
    deadline = time.time() + 600
    # kill once the first run is complete and a later one has started
    while time.time() < deadline and proc.poll() is None:
        if len(list((killed / "t" / "runs").glob("*/summary.json"))) >= 2:
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = mtimes(killed)
    assert 0 < len(first) < 4, "the kill should land mid-study"
    r = run_study(killed, *launcher)
    assert r.returncode == 0, r.stderr[-2000:]
    after = mtimes(killed)
    assert all(after[k] == v for k, v in first.items() if json.loads(
        (killed / "t" / "runs" / k / "summary.json").read_text())["status"] == "complete")
    got = {m["id"]: m["status"] for m in index(killed)["members"]}
    assert set(got.values()) == {"complete"} and len(got) == 4
    for member in got:
        a = json.loads((ref / "t" / "runs" / member / "summary.json").read_text())["metrics"]
        b = json.loads((killed / "t" / "runs" / member / "summary.json").read_text())["metrics"]
        assert a == b, member


@SIDE_BY_SIDE
def test_a_failing_member_does_not_stop_the_others(tmp_path, launcher):
    # rank 20 exceeds the tiny model's 16-wide matrices: that member fails, the rest complete
    r = run_study(tmp_path, "study.ranks=[1,20]", *launcher)
    assert r.returncode != 0
    assert "lora_r20_s0 (ConfigError: method.rank=20 is larger than the smallest adapted dimension (16)" in r.stderr
    status = {m["id"]: m["status"] for m in index(tmp_path)["members"]}
    assert status == {"none_s0": "complete", "full_s0": "complete", "lora_r1_s0": "complete", "lora_r20_s0": "failed"}


def test_a_member_whose_loss_goes_nan_is_recorded_failed_and_the_others_complete(tmp_path, monkeypatch, capsys):
    """One member's loss turns NaN at its third step (a forward hook, only in the run trained at the rate planted for
    rank 2): that run is failed with the step and reason and no ΔW, its study index says so, and the others complete."""
    from lora_study.run import runner as run
    real = run.train

    def train(model, train_data, val_data, cfg, optim_cfg, *args, **kwargs):
        if optim_cfg.lr == 0.0123:
            steps = []

            def poison(module, inputs, output):
                if module.training:
                    steps.append(1)
                    if len(steps) >= 3:
                        output.loss = output.loss * float("nan")
                return output
            model.register_forward_hook(poison)
        return real(model, train_data, val_data, cfg, optim_cfg, *args, **kwargs)
    monkeypatch.setattr(run, "train", train)
    assert study_here(tmp_path, "study.lr_by_rank={2:0.0123}") == 1
    assert "lora_r2_s0 (Diverged: the training loss became nan at step 3" in capsys.readouterr().err
    members = {m["id"]: m for m in index(tmp_path)["members"]}
    assert {k: m["status"] for k, m in members.items()} == {"none_s0": "complete", "full_s0": "complete",
                                                            "lora_r1_s0": "complete", "lora_r2_s0": "failed"}
    assert "the training loss became nan at step 3" in members["lora_r2_s0"]["reason"]
    failed = json.loads((tmp_path / "t" / "runs" / "lora_r2_s0" / "summary.json").read_text())
    assert (failed["status"], failed["failed_step"]) == ("failed", 3)
    assert not (tmp_path / "t" / "runs" / "lora_r2_s0" / "delta.safetensors").exists()
    done = json.loads((tmp_path / "t" / "runs" / "lora_r1_s0" / "summary.json").read_text())
    assert done["status"] == "complete" and done["steps"] == 6


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_launchers_run_a_two_member_study(tmp_path, launcher):
    extra = [f"hydra/launcher={launcher}", "study.methods=[none,lora]", "study.ranks=[2]"]
    if launcher == "joblib":
        extra.append("hydra.launcher.n_jobs=2")
    else:
        extra += ["hydra.launcher.timeout_min=10", "hydra.launcher.cpus_per_task=1"]
    # on the command line: submitit pickles the members' job, which a test module's registrations must not enter
    r = run_study(tmp_path, *extra)
    assert r.returncode == 0, r.stderr[-3000:]
    assert {m["id"]: m["status"] for m in index(tmp_path)["members"]} == {"none_s0": "complete", "lora_r2_s0": "complete"}
    for member in ("none_s0", "lora_r2_s0"):  # each job wrote its own complete run
        s = json.loads((tmp_path / "t" / "runs" / member / "summary.json").read_text())
        assert s["status"] == "complete" and s["member"] == member


def test_members_side_by_side_run_with_their_share_of_the_cores(tmp_path):
    r = run_study(tmp_path, "hydra/launcher=parallel", "study.methods=[none,lora]", "study.ranks=[2]")
    assert r.returncode == 0, r.stderr[-3000:]
    idx = index(tmp_path)
    threads = idx["threads_per_member"]
    assert threads is not None and threads >= 1 and "train.threads=1" not in idx["arguments"]
    for m in idx["members"]:
        run = tmp_path / "t" / m["dir"]
        assert json.loads((run / "summary.json").read_text())["threads"] == threads
        assert f"train.threads={threads}" in (run / ".hydra" / "overrides.yaml").read_text()
