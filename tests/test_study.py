"""Paired studies on the tiny model: completion, index, resume after SIGKILL, failures, launchers; the last two
also with members side by side (hydra/launcher=parallel, one thread each)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import BIN, ROOT, TINY

STUDY = TINY + ["study.ranks=[1,2]", "run.truncation_ranks=[1]"]


def study_cmd(root: Path, *extra):
    return [str(BIN / "lora-study-study"), *STUDY, f"study.root={root}", "study.name=t", *extra]


def run_study(root, *extra, timeout=900):
    return subprocess.run(study_cmd(root, *extra), cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ})


def index(root):
    return json.loads((root / "t" / "study.json").read_text())


def mtimes(root):
    return {p.parent.name: p.stat().st_mtime_ns for p in (root / "t" / "runs").glob("*/summary.json")}


def test_study_runs_every_member_then_resumes_without_redoing(tmp_path):
    r = run_study(tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    idx = index(tmp_path)
    assert [m["id"] for m in idx["members"]] == ["none_s0", "full_s0", "lora_r1_s0", "lora_r2_s0"]
    assert all(m["status"] == "complete" for m in idx["members"])
    assert idx["schema_version"] == 1 and idx["shared"]["budget"]["max_steps"] == 6
    lr = {m["id"]: m["lr"] for m in idx["members"]}
    assert lr["full_s0"] != lr["lora_r1_s0"]  # per-method learning rates
    assert {m["alpha"] for m in idx["members"] if m["method"] == "lora"} == {2.0, 4.0}  # alpha = 2r
    before = mtimes(tmp_path)
    r = run_study(tmp_path)
    assert r.returncode == 0 and r.stdout.count("complete") >= 4
    assert mtimes(tmp_path) == before  # nothing redone

    # changing a shared setting for the same study name is refused before any work
    r = run_study(tmp_path, "train.max_steps=7")
    assert r.returncode != 0 and "different budget settings" in r.stderr
    assert mtimes(tmp_path) == before


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
    assert "lora_r20_s0" in r.stderr and "larger than the smallest adapted dimension" in r.stderr
    status = {m["id"]: m["status"] for m in index(tmp_path)["members"]}
    assert status == {"none_s0": "complete", "full_s0": "complete", "lora_r1_s0": "complete", "lora_r20_s0": "failed"}


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_launchers_run_a_two_member_study(tmp_path, launcher):
    extra = [f"hydra/launcher={launcher}", "study.methods=[none,lora]", "study.ranks=[2]"]
    if launcher == "joblib":
        extra.append("hydra.launcher.n_jobs=2")
    else:
        extra += ["hydra.launcher.timeout_min=10", "hydra.launcher.cpus_per_task=1"]
    r = run_study(tmp_path, *extra)
    assert r.returncode == 0, r.stderr[-3000:]
    assert {m["id"]: m["status"] for m in index(tmp_path)["members"]} == {"none_s0": "complete", "lora_r2_s0": "complete"}


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
