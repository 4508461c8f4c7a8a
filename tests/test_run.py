"""One run end to end on the tiny model: artifacts, determinism, adapter reload, divergence."""
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_tiny
from lora_study.artifacts import RunDir


def files(d: Path):
    return sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())


HYDRA = [".hydra/config.yaml"]


@pytest.mark.parametrize("method,expected", [
    ("lora", HYDRA + ["adapter/README.md", "adapter/adapter_config.json", "adapter/adapter_model.safetensors",
                      "delta.safetensors", "metrics.jsonl", "predictions.safetensors", "spectrum.safetensors",
                      "summary.json"]),
    ("full", HYDRA + ["delta.safetensors", "metrics.jsonl", "predictions.safetensors", "spectrum.safetensors",
                      "summary.json"]),
    ("none", HYDRA + ["metrics.jsonl", "predictions.safetensors", "summary.json"]),
])
def test_run_directory_holds_exactly_the_expected_files(tmp_path, method, expected):
    summary, _ = run_tiny(tmp_path, [f"method={method}"])
    assert files(tmp_path) == sorted(expected)
    assert summary["status"] == "complete" and RunDir(tmp_path).check_complete() is None
    assert summary["head_trained"] is True


def test_per_example_outputs_reproduce_the_summary(tmp_path):
    import numpy as np
    s, _ = run_tiny(tmp_path, ["method=lora", "heldout.n_train=20", "heldout.n_test=20", "heldout.n_drift=20"])
    p = RunDir(tmp_path).predictions()
    assert len(p["test.correct"]) == s["examples"]["test"]
    assert p["test.correct"].mean() == s["metrics"]["test_accuracy"]
    assert np.array_equal(p["test.correct"], p["test.prediction"] == p["test.label"])
    assert np.isclose(p["test.loss"].mean(), s["metrics"]["test_loss"], rtol=1e-5)
    for task, t in s["heldout"]["tasks"].items():
        assert p[f"heldout.{task}.base_correct"].mean() == t["base"]
        assert p[f"heldout.{task}.finetuned_correct"].mean() == t["finetuned"]
        assert len(p[f"heldout.{task}.finetuned_correct"]) == s["heldout"]["probe"]["n_test"]


def test_full_run_records_truncation_and_accounting(tmp_path):
    s, cfg = run_tiny(tmp_path, ["method=full", "optim.lr=1e-3"])
    for scope in ("finetuned_rest", "pretrained_rest", "targets_only"):
        assert [r["k"] for r in s["truncation"]["scopes"][scope]["ranks"]] == [0, 1, 2]
    # where the run's time after training went, one timer per pass it made
    phases = s["time"]["after_training"]
    assert {"test_s", "delta_and_storage_s", "heldout_s", "truncation_s"} <= set(phases)
    assert all(v >= 0 for v in phases.values()) and phases["heldout_s"] == s["heldout"]["seconds"]
    # a pass the run did not make has no timer
    assert ("latency_s" in phases) == bool(cfg.run.latency)
    assert ("intruder_scaling_s" in phases) == bool(cfg.run.intruder_scaling)
    n = s["params"]["trainable"]
    assert n == s["params"]["total"]
    # AdamW in fp32: exp_avg and exp_avg_sq (8 bytes per parameter) plus a 4-byte step per tensor
    from conftest import load_model
    n_tensors = len(list(load_model(cfg.model).model.parameters()))
    assert s["memory"]["optimizer_state_bytes"] == 8 * n + 4 * n_tensors
    assert s["memory"]["gradient_bytes"] == 4 * n
    spectra = load_file(tmp_path / "spectrum.safetensors")
    deltas = load_file(tmp_path / "delta.safetensors")
    assert spectra.keys() == deltas.keys() and len(deltas) == 12  # 2 layers x 6 linear modules
    for k in deltas:
        assert torch.allclose(spectra[k], torch.linalg.svdvals(deltas[k]), atol=1e-5)


def test_lora_optimizer_bytes_are_adam_state_only(tmp_path):
    s, _ = run_tiny(tmp_path, ["method=lora", "method.rank=2"])
    trainable = s["params"]["trainable"]
    n_tensors = 2 * len(s["lora_targets"]) + 2  # A, B per target; classifier weight and bias
    assert s["memory"]["optimizer_state_bytes"] == 8 * trainable + 4 * n_tensors


def test_same_seed_gives_identical_metrics_and_delta(tmp_path):
    a, _ = run_tiny(tmp_path / "a", ["method=lora", "method.rank=4"])
    b, _ = run_tiny(tmp_path / "b", ["method=lora", "method.rank=4"])
    assert a["metrics"] == b["metrics"]
    da, db = load_file(tmp_path / "a" / "delta.safetensors"), load_file(tmp_path / "b" / "delta.safetensors")
    assert all(torch.equal(da[k], db[k]) for k in da)
    c, _ = run_tiny(tmp_path / "c", ["method=lora", "method.rank=4", "train.seed=1"])
    dc = load_file(tmp_path / "c" / "delta.safetensors")
    assert any(not torch.equal(da[k], dc[k]) for k in da)


QUIET = ["heldout=none", "run.latency=false", "run.truncation_ranks=[]"]


def test_every_method_sees_the_same_batches(tmp_path, monkeypatch):
    """The batches the training loop hands to the model (input ids and labels, in order), recorded for two different
    methods and the frozen base, are the same; another train.seed gives other batches."""
    from lora_study.run import train as T
    real, seen = T.to_device, {}

    def record(batch, device):
        seen[run].append((batch["input_ids"].clone(), batch["labels"].clone()))
        return real(batch, device)
    monkeypatch.setattr(T, "to_device", record)
    for run in (("full",), ("lora", "method.rank=2"), ("none",), ("lora", "train.seed=1")):
        seen[run] = []
        run_tiny(tmp_path / "_".join(run), [f"method={run[0]}", *run[1:], *QUIET])
    full = seen[("full",)]
    assert len(full) == 6 and [len(y) for _, y in full] == [8] * 6  # max_steps batches of batch_size
    assert len({tuple(x.flatten().tolist()) for x, _ in full}) == 6  # six different batches, not one repeated
    for other in (("lora", "method.rank=2"), ("none",)):
        assert len(seen[other]) == 6
        assert all(torch.equal(x, x2) and torch.equal(y, y2) for (x, y), (x2, y2) in zip(full, seen[other])), other
    # the order comes from train.seed: another seed trains on other batches
    assert not any(torch.equal(x, x2) for (x, _), (x2, _) in zip(full, seen[("lora", "train.seed=1")]))


def test_lora_training_leaves_base_weights_untouched(tmp_path, monkeypatch):
    """The trained PeftModel's base weights (every parameter but the adapters and the head) equal W_pre, taken from
    the model before it was prepared, while the adapters moved."""
    from conftest import load_model
    from lora_study.run import runner as run
    real, after = run.train, {}

    def train_and_keep(model, *args, **kwargs):
        result = real(model, *args, **kwargs)
        after.update({n: p.detach().clone() for n, p in model.named_parameters()})
        return result
    monkeypatch.setattr(run, "train", train_and_keep)
    _, cfg = run_tiny(tmp_path, ["method=lora", "method.target_modules=all_linear", "optim.lr=1e-2", *QUIET])
    w_pre = dict(load_model(cfg.model).model.named_parameters())
    base = {n: v for n, v in after.items() if "lora_" not in n and "classifier" not in n}
    assert len(base) == len(w_pre) - 2  # every parameter but the head's weight and bias
    for name, v in base.items():
        pre = name.replace("base_model.model.", "", 1).replace(".base_layer.", ".")
        assert torch.equal(v, w_pre[pre]), name
    b = [v for n, v in after.items() if "lora_B" in n]
    assert len(b) == 12 and all(float(v.abs().max()) > 1e-4 for v in b)  # B left zero: the adapters trained


def test_saved_adapter_reproduces_the_per_example_predictions(tmp_path, cue_task):
    """The adapter reloaded onto a fresh base predicts each test example as the run did (on a task the run learned
    partly, so the predictions are not one class); with every lora_B zeroed the predictions change."""
    import numpy as np
    from peft import PeftModel

    from conftest import load_model
    from lora_study.methods.lora import lora_layers
    from lora_study.tasks.classification import Encoded, evaluate, load_task
    s, cfg = run_tiny(tmp_path, ["method=lora", "method.rank=4", "optim.lr=5e-2", "train.max_steps=60",
                                 "train.batch_size=16", "train.eval_every=60", *cue_task, *QUIET])
    saved = RunDir(tmp_path).predictions()["test.prediction"]
    assert len(set(saved.tolist())) == 2 and s["metrics"]["test_accuracy"] > 0.55  # it learned something
    loaded = load_model(cfg.model)
    model = PeftModel.from_pretrained(loaded.model, tmp_path / "adapter")
    test = Encoded(load_task(cfg.task).test, loaded.tokenizer, cfg.train.max_length)
    got = evaluate(model, test, 64, torch.device("cpu"), "fp32", per_example=True)
    assert np.array_equal(got["per_example"]["prediction"], saved)
    assert got["accuracy"] == s["metrics"]["test_accuracy"]
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B["default"].weight.zero_()
    zeroed = evaluate(model, test, 64, torch.device("cpu"), "fp32", per_example=True)["per_example"]["prediction"]
    assert not np.array_equal(zeroed, saved)


def test_divergence_is_recorded_as_failed_with_metrics_kept(tmp_path, monkeypatch):
    from lora_study.run import train as T
    real = T.to_device
    calls = {"n": 0}

    def poisoned(batch, device):
        calls["n"] += 1
        if calls["n"] >= 3 and "labels" in batch and batch["input_ids"].shape[0] == 8:
            import torch.nn.functional as F
            monkeypatch.setattr(F, "cross_entropy", lambda *a, **k: torch.tensor(float("nan"), requires_grad=True))
        return real(batch, device)

    monkeypatch.setattr(T, "to_device", poisoned)
    with pytest.raises(T.Diverged):
        run_tiny(tmp_path, ["method=full"])
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["status"] == "failed" and s["failed_step"] == 3 and "nan" in s["reason"]
    assert (tmp_path / "metrics.jsonl").read_text().strip()
    assert RunDir(tmp_path).check_complete().startswith("status is 'failed'")


def test_truncation_scopes_and_their_k0_controls(tmp_path):
    import numpy as np

    from conftest import load_model
    from lora_study.tasks.classification import Encoded, evaluate, load_task
    s, cfg = run_tiny(tmp_path, ["method=full", "optim.lr=1e-2", "run.save_model=true", "heldout=none",
                                 "run.latency=false"])
    scopes = s["truncation"]["scopes"]
    assert set(scopes) == {"finetuned_rest", "pretrained_rest", "targets_only"}
    assert [e["k"] for e in scopes["pretrained_rest"]["ranks"]] == [0, 1, 2]
    assert scopes["targets_only"]["matrices"] == 4 and scopes["finetuned_rest"]["matrices"] == 12  # W_q, W_v of 2 layers
    p = RunDir(tmp_path).predictions()
    # with k = 0 nothing of ΔW is left: targets_only and pretrained_rest are both W_pre everywhere but the head
    assert np.array_equal(p["truncation.pretrained_rest.k0.correct"], p["truncation.targets_only.k0.correct"])
    # ... which is the pretrained model carrying the finetuned head
    pretrained = load_model(cfg.model).model
    from lora_study.models import ModelConfig
    finetuned = load_model(ModelConfig(source="hf", name=str(tmp_path / "model")))
    state = {n: v for n, v in finetuned.model.state_dict().items() if n.startswith("classifier.")}
    pretrained.load_state_dict(state, strict=False)
    test = Encoded(load_task(cfg.task).test, finetuned.tokenizer, cfg.train.max_length)
    control = evaluate(pretrained, test, 64, torch.device("cpu"), "fp32", per_example=True)
    assert scopes["pretrained_rest"]["ranks"][0]["test_accuracy"] == control["accuracy"]
    assert np.array_equal(p["truncation.pretrained_rest.k0.correct"], control["per_example"]["correct"])
    # the run's own test outputs are untouched by the truncation it made afterwards
    assert p["test.correct"].mean() == s["metrics"]["test_accuracy"]


def test_intruder_scaling_with_lambda_one_changes_nothing(tmp_path):
    import numpy as np
    s, _ = run_tiny(tmp_path, ["method=lora", "method.rank=2", "optim.lr=1e-2", "heldout=none", "run.latency=false",
                               "run.intruder_scaling=true", "run.intruder_lambda=1.0", "run.intruder_eps=1.0",
                               "run.intruder_k=3"])
    i = s["intruder_scaling"]
    assert i["modules"] == 4 and i["vectors_examined"] == 12 and i["intruders"] > 0
    p = RunDir(tmp_path).predictions()
    assert np.array_equal(p["intruder_scaled.test.correct"], p["test.correct"])
    assert i["accuracy"] == s["metrics"]["test_accuracy"]
    t, _ = run_tiny(tmp_path / "scaled", ["method=lora", "method.rank=2", "optim.lr=1e-2", "heldout=none",
                                          "run.latency=false", "run.intruder_scaling=true", "run.intruder_lambda=0.0",
                                          "run.intruder_eps=1.0", "run.intruder_k=3"])
    assert t["intruder_scaling"]["loss"] != t["metrics"]["test_loss"]  # removing the top directions changes the model


def test_threads_are_set_for_the_run_and_change_results_only_at_float_rounding(tmp_path):
    """train.threads=1 (a member beside another) and =2, on a model wide enough for torch to split its work over
    threads: the same metrics, ΔW equal to float rounding (the order of partial sums differs, so not bit for bit:
    measured 1e-9 on entries of 1e-3); the process keeps its own thread count after the run."""
    before = torch.get_num_threads()
    wide = ["method=lora", "method.rank=4", "model.hidden_size=256", "model.intermediate_size=512", "model.num_heads=4"]
    one, _ = run_tiny(tmp_path / "one", wide + ["train.threads=1"])
    two, _ = run_tiny(tmp_path / "two", wide + ["train.threads=2"])
    assert (one["threads"], two["threads"]) == (1, 2) and torch.get_num_threads() == before
    for key in ("test_accuracy", "best_validation_accuracy"):
        assert one["metrics"][key] == two["metrics"][key]
    assert one["metrics"]["test_loss"] == pytest.approx(two["metrics"]["test_loss"], rel=1e-6)
    d1, d2 = load_file(tmp_path / "one" / "delta.safetensors"), load_file(tmp_path / "two" / "delta.safetensors")
    assert d1.keys() == d2.keys()
    for k in d1:
        assert float((d1[k] - d2[k]).abs().max()) <= 1e-5 * float(d1[k].abs().max()), k
    default, _ = run_tiny(tmp_path / "default", ["method=lora", "method.rank=4"])
    assert default["threads"] == before  # null: torch's default, untouched
