"""The real packaged default model (all-MiniLM-L6-v2) on the real default task, for a few steps; lora-study-train's
one command-line case; bad input refused before any work, in-process and through the console script's handler."""
import json

import pytest
import torch

from conftest import cli, compose, run_tiny

REAL = ["model=minilm", "train.max_steps=3", "train.eval_every=3", "train.batch_size=8", "train.max_length=48",
        "task.max_eval_examples=32", "run.latency=false", "run.truncation_ranks=[1]",
        "heldout.n_train=30", "heldout.n_test=30", "heldout.n_drift=30", "heldout.max_length=32"]


@pytest.mark.slow
def test_packaged_model_lora_run(tmp_path):
    s, _ = run_tiny(tmp_path, ["method=lora", "method.rank=8"], base=REAL)
    assert s["status"] == "complete" and s["model"] == "all-MiniLM-L6-v2"
    assert s["params"]["total"] == 22_713_986  # 22.7 M encoder parameters + the 2-class head
    # attn_qv on 6 layers of 384 x 384: 12 matrices x 8 x (384 + 384), plus the head (384 x 2 + 2)
    assert s["params"]["trainable"] == 12 * 8 * 768 + 770
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert cfg["r"] == 8 and cfg["lora_alpha"] == 16 and cfg["peft_type"] == "LORA"
    assert len(cfg["target_modules"]) == 12
    # W_pre is read from the package's own safetensors file for the analysis: the pretrained weights themselves
    from conftest import load_model
    from lora_study.artifacts import RunDir
    from lora_study.config import ModelConfig
    name = "bert.encoder.layer.0.attention.self.query"
    pretrained = load_model(ModelConfig()).model.get_submodule(name).weight
    assert torch.equal(RunDir(tmp_path).base_weight(name), pretrained)
    # ΔW is the adapter's own s·B·A (α/r = 16/8), as peft saved it
    from safetensors.torch import load_file
    adapter = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    a = adapter[f"base_model.model.{name}.lora_A.weight"]
    b = adapter[f"base_model.model.{name}.lora_B.weight"]
    assert float(b.abs().max()) > 0
    assert torch.allclose(load_file(tmp_path / "delta.safetensors")[name], (16 / 8) * b @ a, atol=1e-7)


def test_train_cli_writes_a_run_directory(tmp_path):
    """lora-study-train's one command-line case: a tiny run through the console script."""
    r = cli("lora-study-train", "model=tiny", "method=none", "train.max_steps=2", "train.eval_every=2",
            "task.max_eval_examples=32", "heldout=none", "run.latency=false", f"hydra.run.dir={tmp_path}/run")
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["status"] == "complete" and s["params"]["trainable"] == 16 * 2 + 2  # the head of a 16-wide model
    assert r.stdout.strip().endswith(f"none: test accuracy {s['metrics']['test_accuracy']:.4f} -> {tmp_path / 'run'}")


@pytest.mark.parametrize("args,needle", [
    (["method.rank=0"], "method.rank=0 is not valid"),
    (["model=hf", "model.name=/nonexistent/model"], "is neither a readable local model directory"),
    (["task=files", "task.train_file=/nonexistent.csv"], "does not exist"),
    (["method.target_modules=[q_proj]"], "matches no linear layer"),
    (["optim.lr=-1"], "optim.lr=-1.0 is not valid"),
    (["train.max_steps=0"], "train.max_steps=0 is not valid"),
    (["task.n_test=-5"], "task.n_test=-5 is not valid; it must be a positive integer."),
    (["method=subspace", "method.d=100000000", "method.projection=dense"],
     "method.d=100000000 is larger than D="),
    (["method=subspace", "method.d=20000", "method.projection=dense"],
     "method.d=20000 with method.projection=dense is too large"),
])
def test_bad_input_stops_before_training_with_one_sentence(tmp_path, args, needle, monkeypatch):
    from lora_study.run import runner as run
    from lora_study.artifacts import RunDir
    from lora_study.methods import projections
    from lora_study.schema import ConfigError
    monkeypatch.setattr(run, "train", lambda *a, **k: pytest.fail("training started"))
    monkeypatch.setattr(projections, "default_max_bytes", lambda device="cpu": 10**6)  # a small machine
    with pytest.raises(ConfigError) as e:
        run.execute(compose(["model=tiny", *args]), RunDir(tmp_path))
    msg = str(e.value)
    assert needle in msg and msg.endswith(".") and msg.count(". ") == 0, msg
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("args,code,needle", [
    (["method.rank=0"], 2, "error: method.rank=0 is not valid"),  # the suite's check, through run_task's handler
    (["method.rnak=4"], 1, "Could not override 'method.rnak'"),  # Hydra's composition
])
def test_bad_input_through_the_console_entry_point_exits_non_zero_without_a_traceback(tmp_path, args, code, needle,
                                                                                      capsys, monkeypatch):
    import sys

    from hydra.core.global_hydra import GlobalHydra

    from lora_study.run import runner as run
    from lora_study.cli import train_main
    monkeypatch.setattr(run, "train", lambda *a, **k: pytest.fail("training started"))
    monkeypatch.setattr(sys, "argv", ["lora-study-train", "model=tiny", *args, f"hydra.run.dir={tmp_path}/run"])
    GlobalHydra.instance().clear()
    with pytest.raises(SystemExit) as e:
        train_main()
    GlobalHydra.instance().clear()
    err = capsys.readouterr().err
    assert e.value.code == code and needle in err and "Traceback" not in err, err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
