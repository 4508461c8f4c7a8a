"""Causal LMs: completion-only loss, LoRA targets on decoder names, ΔW of every decoder linear layer, exact
match, greedy decoding, held-out forgetting, QLoRA's refusal on CPU, and two LoRA steps on SmolLM2."""
import copy
import math

import pytest
import torch
from safetensors.torch import load_file

from conftest import compose, load_model, prepare, randomize_lora_b, run_tiny
from lora_study.models import ModelConfig
from lora_study.schema import ConfigError

# a tiny causal run: a 2-layer, 16-wide Llama on a slice of the review-label instruction task
LM_TINY = ["model=tiny_llama", "task=lm_review_label", "train.max_steps=4", "train.eval_every=4", "train.batch_size=4",
           "train.max_length=48", "train.eval_batch_size=8", "task.max_eval_examples=8", "task.max_new_tokens=3",
           "run.latency_repeats=1", "run.latency_batches=[1,2]", "run.truncation_ranks=[1,2]", "heldout=none"]
DECODER_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def tiny_lm():
    return load_model(ModelConfig(source="tiny_llama"), family="causal_lm")


def _encoded(tok, prompts, answers, max_length=64):
    from lora_study.tasks.lm_encoding import LMEncoded, LMSplit
    return LMEncoded(LMSplit(prompts, answers), tok, max_length)


def test_loss_is_taken_on_completion_tokens_only(tiny_lm):
    from lora_study.tasks.lm_encoding import chat_pair
    tok = tiny_lm.tokenizer
    enc = _encoded(tok, ["Is this review fresh or rotten?\n\nReview: a long and quite dull film", "Short?"],
                   ["rotten", "fresh"])
    b = enc.batch([0, 1])
    for row, answer in enumerate(["rotten", "fresh"]):
        lab = b["labels"][row]
        scored = lab != -100
        assert tok.decode(b["input_ids"][row][scored]) == chat_pair(tok, "x", answer)[1]  # the reply and its end marker
        assert torch.equal(lab[scored], b["input_ids"][row][scored])
        assert not scored[b["attention_mask"][row] == 0].any()  # padding is never scored
        first = int(scored.nonzero()[0])
        assert tok.decode(b["input_ids"][row][:first]).endswith("assistant\n")  # everything before is prompt
    # the model's loss is the mean NLL over exactly those tokens
    model = tiny_lm.model.eval()
    with torch.no_grad():
        loss = model(**b).loss
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    lab = b["labels"][:, 1:]
    manual = torch.nn.functional.cross_entropy(logits[:, :-1][lab != -100], lab[lab != -100])
    assert torch.allclose(loss, manual, atol=1e-5)
    everything = torch.nn.functional.cross_entropy(logits[:, :-1][b["attention_mask"][:, 1:] == 1],
                                                   b["input_ids"][:, 1:][b["attention_mask"][:, 1:] == 1])
    assert not torch.allclose(loss, everything, atol=1e-3)


def test_long_prompts_lose_the_end_of_the_message_not_the_answer(tiny_lm):
    tok = tiny_lm.tokenizer
    enc = _encoded(tok, ["Fresh or rotten? " + "very " * 200 + "END"], ["rotten"], max_length=48)
    p, c = enc.encoded(0)
    assert len(p) + len(c) <= 48
    text = tok.decode(p)
    assert "Fresh or rotten?" in text and "END" not in text and text.endswith("assistant\n")
    assert tok.decode(c).startswith("rotten")


@pytest.mark.parametrize("preset,kinds", [("attn_qv", {"q_proj", "v_proj"}), ("attn", {"q_proj", "k_proj", "v_proj", "o_proj"}),
                                          ("all_linear", set(DECODER_LINEARS))])
def test_lora_targets_every_preset_on_a_decoder(preset, kinds):
    from lora_study.models.structure import resolve_targets
    from lora_study.models.structure import block_linears
    from lora_study.tasks.causal_lm import CausalLMFamily
    lm = load_model(ModelConfig(source="tiny_llama"), family="causal_lm")
    assert CausalLMFamily().head_modules(lm.model) == []
    targets = resolve_targets(lm.model, preset)
    assert {t.split(".")[-1] for t in targets} == kinds and len(targets) == 2 * len(kinds)  # 2 layers
    shapes = {n: tuple(m.weight.shape) for n, m in block_linears(lm.model).items()}
    prepared = prepare(lm.model, "lora", rank=2, alpha=4, target_modules=preset)
    assert prepared.model.peft_config["default"].modules_to_save is None  # no head on a causal LM
    trainable = sum(p.numel() for p in prepared.model.parameters() if p.requires_grad)
    assert trainable == sum(2 * (shapes[t][0] + shapes[t][1]) for t in targets)  # r (d_out + d_in) per target


def test_exact_match_normalises_case_punctuation_and_extra_words():
    from lora_study.tasks.decoding import exact_match, normalise_answer
    assert normalise_answer("  Fresh.") == "fresh" and normalise_answer("ROTTEN!! it is") == "rotten"
    assert normalise_answer("...") == ""
    assert exact_match(["Rotten!", "fresh or rotten", "", "  FRESH"], ["rotten", "rotten", "fresh", "fresh"]) == 0.5
    with pytest.raises(ValueError):
        exact_match(["fresh"], [])


def test_a_language_model_giving_one_answer_to_every_prompt_did_not_learn():
    """A causal LM on a classification in words ('fresh' / 'rotten') that answers 'fresh' to everything sits at the
    majority class, as a collapsed classifier does; its loss alone (low: the label tokens are likely) would not say so."""
    from lora_study.run import learning
    from lora_study.tasks.decoding import answer_classes
    refs = ["fresh"] * 58 + ["rotten"] * 42
    ids = answer_classes(["Fresh."] * 100, refs)
    assert list(ids["label"][:1]) == [0] and set(ids["prediction"]) == {0}
    out = learning.check("validation", ids, {"loss": 0.18}, None, [1.2] * 10 + [0.2] * 10)
    assert out["did_not_learn"] and out["evidence"]["majority_label_share"] == 0.58
    assert any("one answer for 100.0 %" in r for r in out["reasons"])
    assert any("majority class (0.580)" in r for r in out["reasons"])
    # an answer outside the labels is a class of its own: the frozen base saying "The" to everything is caught too
    other = answer_classes(["The review is fresh"] * 100, refs)
    assert set(other["prediction"]) == {2} and learning.check("test", other, {}, None)["did_not_learn"]
    # a model that answers both ways and mostly right learned
    good = answer_classes(["fresh"] * 50 + ["rotten"] * 8 + ["rotten"] * 40 + ["fresh"] * 2, refs)
    assert not learning.check("validation", good, {"loss": 0.1}, None)["did_not_learn"]
    # free-form answers (more distinct references than a classification has) keep no class ids
    assert answer_classes([f"w{i}" for i in range(100)], [f"w{i}" for i in range(100)]) is None


def test_greedy_decoding_matches_generate_on_left_padded_prompts(tiny_lm):
    from lora_study.tasks.decoding import greedy
    tok, model = tiny_lm.tokenizer, tiny_lm.model.eval()
    enc = _encoded(tok, ["a", "a much longer prompt than the first one, padded on the left"], ["x", "y"])
    b = enc.prompt_batch([0, 1])
    ours = greedy(model, b["input_ids"], b["attention_mask"], 5, stop=[-1], device=torch.device("cpu"), precision="fp32")
    for row in range(2):
        real = b["input_ids"][row][b["attention_mask"][row] == 1][None]
        ref = model.generate(real, attention_mask=torch.ones_like(real), max_new_tokens=5, do_sample=False,
                             pad_token_id=tok.pad_token_id, eos_token_id=None)
        assert ours[row] == ref[0, real.shape[1]:].tolist()


def test_full_finetune_saves_delta_of_every_decoder_linear_layer(tmp_path):
    s, _ = run_tiny(tmp_path, ["method=full", "optim.lr=1e-2"], base=LM_TINY)
    deltas = load_file(tmp_path / "delta.safetensors")
    expected = {f"model.layers.{l}.{'self_attn' if k[0] in 'qkvo' else 'mlp'}.{k}" for l in (0, 1) for k in DECODER_LINEARS}
    assert set(deltas) == expected and set(load_file(tmp_path / "spectrum.safetensors")) == expected
    assert all(float(d.norm()) > 0 for d in deltas.values())
    assert s["family"] == "causal_lm" and s["head_modules"] == [] and s["params"]["trainable"] == s["params"]["total"]
    m = s["metrics"]
    assert m["test_perplexity"] == pytest.approx(math.exp(m["test_loss"]), rel=1e-9)
    entries = s["truncation"]["scopes"]["finetuned_rest"]["ranks"]
    assert [r["k"] for r in entries] == [0, 1, 2] and all(math.isfinite(r["test_perplexity"]) for r in entries)
    # a causal LM has no head: with k = 0 and the rest reset, the model is the pretrained one, scored as a run of
    # the frozen model scores it; the finetuned model (lr 1e-2 on the test's own task) scores better
    frozen, _ = run_tiny(tmp_path / "frozen", ["method=none", "run.truncation_ranks=[]", "run.latency=false"],
                         base=LM_TINY)
    reset = s["truncation"]["scopes"]["pretrained_rest"]["ranks"][0]
    assert reset["test_perplexity"] == pytest.approx(frozen["metrics"]["test_perplexity"], rel=1e-5)
    assert s["truncation"]["scopes"]["targets_only"]["ranks"][0]["test_perplexity"] == pytest.approx(
        reset["test_perplexity"], rel=1e-5)
    assert m["test_perplexity"] < frozen["metrics"]["test_perplexity"]
    assert s["truncation"]["scopes"]["targets_only"]["matrices"] == 4  # W_q, W_v of two layers
    assert set(s["latency"]) == {"plain_batch1_s", "plain_batch2_s"}


def test_lora_run_merges_and_frozen_base_trains_nothing(tmp_path):
    s, _ = run_tiny(tmp_path / "lora", ["method=lora", "method.rank=2", "optim.lr=1e-2"], base=LM_TINY)
    assert s["status"] == "complete" and len(s["lora_targets"]) == 4 and s["steps"] == 4
    assert s["merge"]["max_abs_logit_diff_fp32"] < 1e-4 and set(load_file(tmp_path / "lora" / "delta.safetensors")) == set(s["lora_targets"])
    base, _ = run_tiny(tmp_path / "none", ["method=none"], base=LM_TINY)
    assert base["params"]["trainable"] == 0 and base["steps"] == 0 and base["metrics"]["test_accuracy"] is not None


def test_perplexity_task_records_no_accuracy(tmp_path):
    s, _ = run_tiny(tmp_path, ["task=lm_bbc_business", "method=lora", "task.chunk_words=16", "run.truncation_ranks=[]"],
                    base=LM_TINY)
    m = s["metrics"]
    assert m["test_accuracy"] is None and m["best_validation_accuracy"] is None
    assert math.isfinite(m["test_perplexity"]) and m["test_perplexity"] == pytest.approx(math.exp(m["test_loss"]))
    assert s["task"] == "lm_bbc_business" and s["task_metric"] == "perplexity"
    # a learning-rate search's run (run.evaluate_test=false) keeps the validation perplexity it is scored on
    v, _ = run_tiny(tmp_path / "search", ["task=lm_bbc_business", "method=lora", "task.chunk_words=16",
                                          "run.truncation_ranks=[]", "run.evaluate_test=false"], base=LM_TINY)
    mv = v["metrics"]
    assert mv["test_perplexity"] is None and mv["test_loss"] is None and not v["saved"]["predictions"]
    assert mv["best_validation_perplexity"] == pytest.approx(m["best_validation_perplexity"], rel=1e-6)


def test_heldout_lm_base_forgets_nothing_and_damage_is_positive_forgetting(tiny_lm):
    from lora_study.heldout import make_scorer
    cfg = compose(["heldout.n_test=6", "heldout.n_drift=6", "heldout.max_length=24", "heldout.max_new_tokens=2"]).heldout
    model = copy.deepcopy(tiny_lm.model).eval()  # damaged below; the fixture stays intact
    h = make_scorer(cfg, "causal_lm", model, tiny_lm.tokenizer, "tiny-llama-test", torch.device("cpu"), batch_size=8)
    same = h.evaluate(model)
    assert set(same["tasks"]) == {"lee_wiki", "bbc_tech_politics", "subjectivity", "lee_wiki_kl", "bbc_tech_politics_kl"}
    assert all(t["forgetting"] == pytest.approx(0.0, abs=1e-6) for t in same["tasks"].values())
    assert same["cka"] == pytest.approx(1.0, abs=1e-6)
    with torch.no_grad():  # sharper random logits: a random model near uniform becomes confidently wrong
        model.model.embed_tokens.weight.mul_(50.0)
    hurt = h.evaluate(model)
    for name in ("lee_wiki", "bbc_tech_politics"):
        t = hurt["tasks"][name]
        assert t["forgetting"] == pytest.approx(t["finetuned"] - t["base"]) and t["relative"] > 0
    assert hurt["forgetting_by_unit"]["perplexity"] > 0 and hurt["forgetting_by_unit"]["kl"] > 0
    assert hurt["forgetting_mean"] == hurt["tasks"]["subjectivity"]["forgetting"]  # accuracy drops alone


def test_qlora_on_cpu_stops_with_one_sentence_before_any_work(tmp_path, monkeypatch):
    from lora_study.run import runner as run
    from lora_study.artifacts import RunDir
    from lora_study.tasks.causal_lm import CausalLMFamily
    monkeypatch.setattr(run, "build_model", lambda *a, **k: pytest.fail("a model was loaded"))
    monkeypatch.setattr(CausalLMFamily, "load", lambda *a, **k: pytest.fail("a task was loaded"))
    cfg = compose(LM_TINY + ["method=qlora", "train.device=cpu"])
    with pytest.raises(ConfigError) as e:
        run.execute(cfg, RunDir(tmp_path))
    msg = str(e.value)
    assert "method=qlora" in msg and "CUDA" in msg and msg.count(". ") == 0 and msg.endswith(".")
    assert not any(tmp_path.iterdir())


def test_task_family_and_model_must_agree(tmp_path):
    from lora_study.artifacts import RunDir
    from lora_study.run.runner import execute
    with pytest.raises(ConfigError, match="is a causal LM and task.family=classification"):
        execute(compose(["model=tiny_llama", "task=rotten_tomatoes"]), RunDir(tmp_path))
    with pytest.raises(ConfigError, match="task.family=causal_lm needs a causal LM"):
        execute(compose(["model=tiny", "task=lm_review_label"]), RunDir(tmp_path))
    with pytest.raises(ConfigError, match="task.source=bbc_business is not a classification task"):
        execute(compose(["model=tiny", "task=lm_bbc_business", "task.family=classification"]), RunDir(tmp_path))
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_smollm2_checkpoint_is_the_dequantised_gguf_and_takes_two_lora_steps(tmp_path, smollm2):
    import json

    import gguf
    import numpy as np

    from lora_study.models.gguf import smollm2_gguf
    s, _ = run_tiny(tmp_path, ["model=smollm2_135m", "method=lora", "method.rank=4", "train.max_steps=2",
                               "train.eval_every=2", "train.batch_size=2", "train.max_length=48",
                               "task.max_eval_examples=2", "run.latency=false", "run.truncation_ranks=[]"], base=LM_TINY)
    config = json.loads((smollm2 / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    assert s["base_model"]["path"] == str(smollm2) and s["steps"] == 2 and s["status"] == "complete"
    assert len(s["lora_targets"]) == 60  # 30 layers x (q_proj, v_proj)
    # W_pre as the analyses read it is the GGUF file's Q4_1 weights dequantised (w = d·q + m per block of 32);
    # W_v, because llama.cpp stores W_q and W_k permuted for its rotary layout
    from lora_study.artifacts import BaseWeights
    w = BaseWeights(str(smollm2)).get("model.layers.0.self_attn.v_proj")
    stored = next(t for t in gguf.GGUFReader(str(smollm2_gguf())).tensors if t.name == "blk.0.attn_v.weight")
    assert stored.tensor_type == gguf.GGMLQuantizationType.Q4_1
    assert w.dtype == torch.float32 and np.array_equal(w.numpy(), gguf.quants.dequantize(stored.data, stored.tensor_type))


@pytest.mark.parametrize("method", ["full", "lora"])
def test_gradient_checkpointing_gives_the_same_gradients(method):
    grads = []
    for checkpointing in (False, True):
        lm = load_model(ModelConfig(source="tiny_llama"), family="causal_lm")
        torch.manual_seed(0)  # the same random LoRA factors both times
        fields = {"rank": 2, "alpha": 4} if method == "lora" else {}
        prepared = prepare(lm.model, method, gradient_checkpointing=checkpointing, **fields)
        if method == "lora":
            randomize_lora_b(prepared.model)
        model = prepared.model.train()
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        assert base.is_gradient_checkpointing == checkpointing
        b = _encoded(lm.tokenizer, ["Is this review fresh or rotten?", "Short?"], ["rotten", "fresh"]).batch([0, 1])
        model(**b).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-6) for n in grads[0])


def test_subspace_training_saves_delta_of_every_decoder_linear_layer(tmp_path):
    s, _ = run_tiny(tmp_path, ["method=subspace", "method.d=64", "optim.lr=1e-2", "run.truncation_ranks=[]"], base=LM_TINY)
    deltas = load_file(tmp_path / "delta.safetensors")
    assert {n.split(".")[-1] for n in deltas} == set(DECODER_LINEARS) and len(deltas) == 14
    assert all(float(d.norm()) > 0 for d in deltas.values())  # one θ_d moves every weight it projects onto
    assert s["params"]["trainable"] == 64 and s["subspace"]["d"] == 64  # θ_d alone: a causal LM has no head
    assert s["delta_norms"] == pytest.approx({n: float(d.norm()) for n, d in deltas.items()}, rel=1e-6)
