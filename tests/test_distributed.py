"""One run over two processes (torchrun, gloo on the CPU) on the tiny BERT: DDP LoRA and FSDP full finetuning
give the ΔW of one process with the same global batch; one run directory; a crash in one process fails the run
with its reason and leaves no partial artifacts; bad process counts are refused before any work."""
import os
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY, cli, compose, run_tiny
from lora_study.artifacts import RunDir
from lora_study.config import ConfigError, validate
from lora_study.run.distributed import RunFailed, launch

# dropout off: each process draws its own masks, so only without dropout can two processes equal one
SAME = ["model.dropout=0", "heldout=none", "run.latency=false", "run.truncation_ranks=[1]"]
ONE = ["train.batch_size=8"]  # one process, the global batch
TWO = ["train.batch_size=4", "train.processes=2"]  # two processes of 4: the same global batch
ATOL = 1e-6  # float rounding only (measured ~1e-8); ΔW entries here reach 3e-3 (full) and 3e-2 (LoRA)


def files(d: Path):
    """The run's files but Hydra's (the command line adds hydra.yaml, overrides.yaml) and wandb's."""
    return sorted(str(p.relative_to(d)) for p in d.rglob("*")
                  if p.is_file() and not {".hydra", "wandb"} & set(p.relative_to(d).parts))


def max_delta_difference(a: Path, b: Path) -> float:
    da, db = load_file(a / "delta.safetensors"), load_file(b / "delta.safetensors")
    assert da.keys() == db.keys() and da
    return max(float((da[k] - db[k]).abs().max()) for k in da)


def launch_tiny(out: Path, overrides):
    """``train.processes > 1`` as the run command does it, with Hydra's .hydra/config.yaml written first."""
    from omegaconf import OmegaConf
    cfg = compose(list(TINY) + list(overrides))
    (out / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, out / ".hydra" / "config.yaml")
    validate(cfg)
    return launch(cfg, RunDir(out))


def losses(out: Path):
    return [r["loss"] for r in RunDir(out).metrics() if r["split"] == "train"]


def test_lora_ddp_over_two_processes_matches_one_and_writes_one_run_directory(tmp_path):
    method = ["method=lora", "method.rank=2", "optim.lr=5e-3", "train.log_every=1", *SAME]
    one, _ = run_tiny(tmp_path / "one", method + ONE)
    work = tmp_path / "cli"
    work.mkdir()
    # the run command as a user types it, with wandb on: Hydra's default run directory under the working directory
    r = cli("lora-study-train", *TINY, *method, *TWO, "logger=wandb", cwd=work)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = list((work / "results" / "runs").iterdir())
    assert len(runs) == 1 and [p.name for p in work.iterdir()] == ["results"]
    two = runs[0]
    assert files(two) == files(tmp_path / "one")
    assert len(list(two.glob("wandb/offline-run-*/run-*.wandb"))) == 1  # rank 0 alone logs
    s = RunDir(two).summary()
    assert s["status"] == "complete" and RunDir(two).check_complete() is None
    assert max_delta_difference(tmp_path / "one", two) < ATOL
    assert losses(two) == pytest.approx(losses(tmp_path / "one"), abs=1e-6)  # the global batch's loss
    assert s["metrics"]["test_loss"] == pytest.approx(one["metrics"]["test_loss"], abs=1e-5)
    assert s["processes"] == 2 and s["distributed"]["strategy"] == "ddp"
    assert s["distributed"]["global_batch_size"] == 8
    # DDP keeps a full replica of the LoRA optimizer state per device: summed, twice one process's
    per = s["memory"]["per_device"]
    assert per["optimizer_state_bytes"] == [one["memory"]["optimizer_state_bytes"]] * 2
    assert s["memory"]["optimizer_state_bytes"] == 2 * one["memory"]["optimizer_state_bytes"]
    assert s["memory"]["gradient_bytes"] == 2 * one["memory"]["gradient_bytes"]
    assert s["params"] == one["params"]


def test_full_fsdp_over_two_processes_matches_one(tmp_path):
    method = ["method=full", "optim.lr=1e-3", "train.log_every=1", *SAME]
    one, _ = run_tiny(tmp_path / "one", method + ONE)
    two = launch_tiny(tmp_path / "two", method + TWO)
    assert two["status"] == "complete" and RunDir(tmp_path / "two").check_complete() is None
    assert files(tmp_path / "two") == files(tmp_path / "one")
    assert max_delta_difference(tmp_path / "one", tmp_path / "two") < ATOL
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), abs=1e-6)
    assert two["distributed"]["strategy"] == "fsdp"
    # the ΔW analyses ran on the gathered weights: truncation and the saved spectra of every block linear
    assert two["truncation"]["scopes"] == one["truncation"]["scopes"]
    assert len(load_file(tmp_path / "two" / "spectrum.safetensors")) == 12
    # AdamW's moments are sharded: the two devices together hold one process's, plus one 4-byte step
    # counter per parameter tensor on the second device
    n = one["params"]["trainable"]
    one_bytes = one["memory"]["optimizer_state_bytes"]
    counters = one_bytes - 8 * n
    per = two["memory"]["per_device"]["optimizer_state_bytes"]
    assert sum(per) == two["memory"]["optimizer_state_bytes"] == one_bytes + counters
    assert max(per) < 0.6 * one_bytes
    assert two["memory"]["gradient_bytes"] == one["memory"]["gradient_bytes"]


CRASH_HOOK = """
import os
rank, where = os.environ["LORA_STUDY_TEST_CRASH"].split(":")
if os.environ.get("RANK") == rank:
    if where == "train":
        import lora_study.run.train as T
        real, calls = T.to_device, []

        def to_device(batch, device):
            calls.append(1)
            if len(calls) == 3:
                raise RuntimeError("injected failure at training step 3")
            return real(batch, device)
        T.to_device = to_device
    else:
        from lora_study.artifacts import RunDir

        def write_spectrum(self, spectra):
            raise RuntimeError("injected failure while writing the spectra")
        RunDir.write_spectrum = write_spectrum
"""


@pytest.mark.parametrize("rank,where,reason", [
    (1, "train", "injected failure at training step 3"),
    (0, "spectrum", "injected failure while writing the spectra"),  # after ΔW was written
])
def test_a_crash_in_one_process_fails_the_run_with_its_reason(tmp_path, monkeypatch, rank, where, reason):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(textwrap.dedent(CRASH_HOOK))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("LORA_STUDY_TEST_CRASH", f"{rank}:{where}")
    out = tmp_path / "run"
    with pytest.raises(RunFailed) as e:
        launch_tiny(out, ["method=lora", "method.rank=2", *SAME, *TWO])
    expected = f"process {rank} of 2 failed: RuntimeError: {reason}"
    assert str(e.value) == expected
    s = RunDir(out).summary()
    assert s["status"] == "failed" and s["reason"] == expected and s["failed_rank"] == rank
    assert RunDir(out).check_complete() == f"status is 'failed': {expected}"
    assert files(out) == ["metrics.jsonl", "summary.json"]  # no ΔW, spectra, adapter, temporary files


def test_bad_process_counts_are_refused_before_any_work(monkeypatch):
    with pytest.raises(ConfigError, match=r"^train.processes=0 is not valid; it must be a positive integer.$"):
        validate(compose(TINY + ["train.processes=0"]))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match=r"^train.processes=4 needs 4 CUDA devices, one per process, but this "
                                          r"machine has 2; set train.processes to at most 2"):
        validate(compose(TINY + ["train.processes=4", "train.device=cuda"]))
    validate(compose(TINY + ["train.processes=2", "train.device=cuda"]))  # two GPUs for two processes


def test_slurm_preset_asks_for_a_gpu_per_process():
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import lora_study.cli  # noqa: F401 - registers the config schema and the multiply resolver
    from conftest import CONF
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        for n in (1, 4):
            cfg = hydra_compose("study", ["hydra/launcher=slurm", "experiment=lm_rank_sweep_gpu",
                                          f"train.processes={n}"], return_hydra_config=True)
            launcher = cfg.hydra.launcher
            assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.cpus_per_task, launcher.mem_gb) == \
                (1, n, 8 * n, 64 * n)
    GlobalHydra.instance().clear()
