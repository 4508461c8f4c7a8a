"""The method registry and the baselines and LoRA methods: exact trainable counts, merge equivalence with B ≠ 0,
ΔW equal to what the merge adds, unmerging restores W0, bad targets and ranks refused."""
import copy

import pytest
import torch

from conftest import compose, load_model, prepare, randomize_lora_b
from lora_study import methods
from lora_study.methods.lora import lora_deltas, lora_layers
from lora_study.models.structure import PRESETS, resolve_targets
from lora_study.models.structure import base_module, block_linears
from lora_study.schema import ConfigError
from lora_study.tasks.classification import ClassificationFamily


@pytest.fixture()
def tiny():
    cfg = compose(["model=tiny"])
    torch.manual_seed(0)
    loaded = load_model(cfg.model)
    return loaded.model, ClassificationFamily().head_modules(loaded.model)


def trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_registry_order_roles_and_unknown_name():
    assert methods.names()[:5] == ["none", "full", "lora", "qlora", "subspace"]
    assert methods.get("none").is_baseline and methods.get("full").is_reference
    assert [methods.get(n).axis for n in ("none", "full", "lora", "qlora", "subspace")] == [None, None, "rank", "rank", "d"]
    with pytest.raises(ConfigError, match="method.name='adapter' is not valid; choose one of none, full, lora"):
        methods.get("adapter")


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("rank", [1, 4])
def test_lora_trainable_count_is_exact(tiny, preset, rank):
    model, head = tiny
    shapes = {n: (m.out_features, m.in_features) for n, m in block_linears(model).items()}
    head_params = sum(p.numel() for h in head for p in getattr(model, h).parameters())
    p = prepare(model, "lora", head, rank=rank, target_modules=preset)
    expected = sum(rank * (shapes[t][0] + shapes[t][1]) for t in p.targets) + head_params
    assert trainable(p.model) == expected
    kinds = {"attn_qv": 2, "attn": 4, "mlp": 2, "all_linear": 6}[preset]  # a BERT block has no gate projection
    assert len(p.targets) == 2 * kinds  # two layers


def test_full_and_none_trainable(tiny):
    model, head = tiny
    total = sum(q.numel() for q in model.parameters())
    head_params = sum(q.numel() for h in head for q in getattr(model, h).parameters())
    assert trainable(prepare(copy.deepcopy(model), "full", head).model) == total
    assert trainable(prepare(copy.deepcopy(model), "none", head).model) == head_params
    assert trainable(prepare(model, "none", head, train_head=False).model) == 0


@pytest.mark.parametrize("kw", [{}, {"use_rslora": True}, {"use_dora": True}])
def test_merge_equals_unmerged_and_adds_exactly_the_saved_delta(tiny, kw):
    model, head = tiny
    p = prepare(model, "lora", head, rank=4, alpha=8, target_modules="all_linear", **kw)
    randomize_lora_b(p.model)
    m = p.model.eval()
    before = {n: base_module(m, n).weight.detach().clone() for n in p.targets}
    x = {"input_ids": torch.randint(0, 1000, (3, 12)), "attention_mask": torch.ones(3, 12, dtype=torch.long)}
    hidden = lambda model: model(**x, output_hidden_states=True).hidden_states[-1]  # noqa: E731 - O(1) values
    with torch.no_grad():
        with m.disable_adapter():
            base = hidden(m)
        unmerged = hidden(m)
        assert (unmerged - base).abs().max() > 1e-2  # B != 0: the adapter changes the output
        deltas = lora_deltas(m)
        merged_model = m.merge_and_unload()
        merged = hidden(merged_model)
    assert torch.allclose(unmerged, merged, atol=1e-5)
    for name, d in deltas.items():  # the saved ΔW is exactly what the merge added to W0
        merged_w = merged_model.get_submodule(name).weight
        added = merged_w - before[name]
        ulps = 4 * torch.finfo(torch.float32).eps * float(merged_w.abs().max())  # rounding of W0 + ΔW − W0
        assert d.abs().max() > 1e-3
        assert torch.allclose(added, d, atol=ulps, rtol=0), (name, float((added - d).abs().max()))


def test_unmerge_with_nonzero_b_restores_w0(tiny):
    model, head = tiny
    p = prepare(model, "lora", head, rank=2, alpha=4, target_modules="all_linear")
    randomize_lora_b(p.model)
    w0 = {n: base_module(p.model, n).weight.detach().clone() for n in p.targets}
    for layer in lora_layers(p.model).values():
        layer.merge()
    moved = max(float((base_module(p.model, n).weight - w0[n]).abs().max()) for n in p.targets)
    assert moved > 1e-3  # the merge changed the weights ...
    for layer in lora_layers(p.model).values():
        layer.unmerge()
    for n in p.targets:  # ... and unmerging puts W0 back
        assert torch.allclose(base_module(p.model, n).weight, w0[n], atol=1e-6)


def test_lora_delta_equals_scaled_BA(tiny):
    model, head = tiny
    p = prepare(model, "lora", head, rank=2, alpha=6)
    randomize_lora_b(p.model)
    for name, layer in lora_layers(p.model).items():
        A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        assert torch.allclose(lora_deltas(p.model)[name], (6 / 2) * B @ A, atol=1e-6)
        assert lora_deltas(p.model)[name].abs().max() > 0


def test_unknown_target_module_lists_what_exists(tiny):
    model, head = tiny
    with pytest.raises(ConfigError, match="matches no linear layer.*query"):
        resolve_targets(model, ["q_proj"])
    with pytest.raises(ConfigError, match="not a preset"):
        resolve_targets(model, "attn_qvk")


def test_rank_larger_than_smallest_dimension_is_refused(tiny):
    model, head = tiny
    with pytest.raises(ConfigError, match="method.rank=17 is larger than the smallest adapted dimension \\(16\\)"):
        prepare(model, "lora", head, rank=17)


def test_study_variants_and_labels():
    st = compose(["experiment=rank_sweep"], "study").study
    lora = methods.get("lora")
    v = lora.variants(st)
    assert [x.value for x in v] == [1, 4, 16, 64]
    assert [x.record["alpha"] for x in v] == [2.0 * r for r in (1, 4, 16, 64)]  # alpha = 2r
    assert v[1].overrides == ["method.rank=4", "method.alpha=8"]
    assert lora.label({"rank": 8}) == "LoRA r=8" and methods.get("qlora").label({"rank": 2}) == "QLoRA r=2"
    sub = methods.get("subspace").variants(compose(["study.dims=[10,100]", "study.said=[false,true]"], "study").study)
    assert [(x.arm, x.value) for x in sub] == [("subspace_did", 10), ("subspace_said", 10), ("subspace_did", 100),
                                               ("subspace_said", 100)]
    assert methods.get("subspace").label(sub[1].record) == "subspace SAID d=10"


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_delta_of_principal_component_inits_is_zero_before_training(tiny, init):
    from lora_study.methods.base import pretrained_weights
    model, head = tiny
    w_pre = pretrained_weights(model, resolve_targets(model, "attn_qv"))
    p = prepare(model, "lora", head, rank=2, alpha=4, init=init)
    saved = lora_deltas(p.model, w_pre)  # W_ft − W_pre: nothing has trained yet
    assert max(float(d.abs().max()) for d in saved.values()) < 1e-5
    naive = lora_deltas(p.model)  # s·B·A alone holds the principal components moved out of W0
    assert min(float(d.norm()) for d in naive.values()) > 0.05


def test_pissa_run_at_a_vanishing_learning_rate_saves_a_vanishing_delta(tmp_path):
    from safetensors.torch import load_file

    from conftest import run_tiny
    run_tiny(tmp_path, ["method=lora", "method.init=pissa", "method.rank=2", "optim.lr=1e-12", "heldout=none",
                        "run.latency=false"])
    deltas = load_file(tmp_path / "delta.safetensors")
    assert len(deltas) == 4 and max(float(d.abs().max()) for d in deltas.values()) < 1e-5


# LoRA's trainable counts by placement on the tiny BERT (hidden 16, FFN 32, 2 layers), counted by hand: per rank,
# each 16×16 attention matrix adds 16 + 16 = 32, each FFN matrix (16→32, 32→16) adds 16 + 32 = 48; per layer
# W_q, W_v: 64; all attention: 128; MLP: 96; all linear: 224.
@pytest.mark.parametrize("preset,per_rank", [("attn_qv", 2 * 64), ("attn", 2 * 128), ("mlp", 2 * 96),
                                             ("all_linear", 2 * 224)])
def test_lora_trainable_count_by_placement_counted_by_hand(tiny, preset, per_rank):
    model, head = tiny
    head_params = sum(p.numel() for h in head for p in getattr(model, h).parameters())
    p = prepare(model, "lora", head, rank=2, target_modules=preset)
    assert trainable(p.model) - head_params == 2 * per_rank
    assert p.info == {}


@pytest.mark.parametrize("rank,expected", [(1, 2), (2, 3), (4, 7)])
def test_matched_parameter_arm_picks_the_closest_rank(tiny, rank, expected):
    """All-attention LoRA matched to all-linear LoRA at r, by hand: all linear costs 448 per rank, all attention 256.
    r = 1: 448 lies between 256 (r 1) and 512 (r 2), closer to 512 → 2; r = 2: 896 lies 128 from both 768 and 1024,
    a tie, which goes to the lower rank → 3; r = 4: 1,792 = 7 × 256 → 7."""
    model, head = tiny
    head_params = sum(p.numel() for h in head for p in getattr(model, h).parameters())
    p = prepare(model, "lora", head, rank=rank, target_modules="attn", match_params="all_linear")
    info = p.info["matched_params"]
    goal = rank * 448
    count = trainable(p.model) - head_params
    assert info["reference_count"] == goal and info["count"] == count and info["rank"] * 256 == count
    # within one rank step of its target, and no other rank closer
    assert abs(count - goal) <= 256 / 2
    assert all(abs(count - goal) <= abs(r * 256 - goal) for r in range(1, 17))
    assert info["rank"] == expected
