"""Methods: exact LoRA trainable counts, merge equivalence with B != 0, frozen base weights, bad targets."""
import copy

import pytest
import torch

from conftest import compose
from lora_study.config import ConfigError, MethodConfig
from lora_study.methods import PRESETS, apply_method, block_linears, lora_deltas, resolve_targets, trainable_count
from lora_study.models import build_model, head_module_names


@pytest.fixture()
def tiny():
    cfg = compose(["model=tiny"])
    torch.manual_seed(0)
    loaded = build_model(cfg.model, num_labels=2)
    return loaded.model, head_module_names(loaded.model, "encoder")


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("rank", [1, 4])
def test_lora_trainable_count_is_exact(tiny, preset, rank):
    model, head = tiny
    shapes = {n: (m.out_features, m.in_features) for n, m in block_linears(model).items()}
    head_params = sum(p.numel() for h in head for p in getattr(model, h).parameters())
    p = apply_method(model, MethodConfig(name="lora", rank=rank, target_modules=preset), head)
    expected = sum(rank * (shapes[t][0] + shapes[t][1]) for t in p.targets) + head_params
    assert trainable_count(p.model) == expected
    assert len(p.targets) == 2 * len(PRESETS[preset]) or preset == "all_linear"


def test_full_and_none_trainable(tiny):
    model, head = tiny
    total = sum(q.numel() for q in model.parameters())
    head_params = sum(q.numel() for h in head for q in getattr(model, h).parameters())
    assert trainable_count(apply_method(copy.deepcopy(model), MethodConfig(name="full"), head).model) == total
    assert trainable_count(apply_method(copy.deepcopy(model), MethodConfig(name="none"), head).model) == head_params
    assert trainable_count(apply_method(model, MethodConfig(name="none", train_head=False), head).model) == 0


@pytest.mark.parametrize("kw", [{}, {"use_rslora": True}, {"use_dora": True}])
def test_merged_equals_unmerged_with_nonzero_b(tiny, kw):
    model, head = tiny
    p = apply_method(model, MethodConfig(name="lora", rank=4, alpha=8, init="random_b", target_modules="all_linear", **kw), head)
    m = p.model.eval()
    x = {"input_ids": torch.randint(0, 1000, (3, 12)), "attention_mask": torch.ones(3, 12, dtype=torch.long)}
    with torch.no_grad():
        base = None
        with m.disable_adapter():
            base = m(**x).logits
        unmerged = m(**x).logits
        assert (unmerged - base).abs().max() > 1e-4  # B != 0: the adapter changes the output
        deltas = lora_deltas(m)
        merged_model = m.merge_and_unload()
        merged = merged_model(**x).logits
    assert torch.allclose(unmerged, merged, atol=1e-5)
    # the saved ΔW is exactly what the merge added
    for name, d in deltas.items():
        assert d.abs().max() > 0


def test_lora_delta_equals_scaled_BA(tiny):
    model, head = tiny
    p = apply_method(model, MethodConfig(name="lora", rank=2, alpha=6, init="random_b"), head)
    from lora_study.methods import lora_layers
    for name, layer in lora_layers(p.model).items():
        A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        assert torch.allclose(lora_deltas(p.model)[name], (6 / 2) * B @ A, atol=1e-6)


def test_unknown_target_module_lists_what_exists(tiny):
    model, head = tiny
    with pytest.raises(ConfigError, match="matches no linear layer.*query"):
        resolve_targets(model, ["q_proj"])
    with pytest.raises(ConfigError, match="not a preset"):
        resolve_targets(model, "attn_qvk")


def test_rank_larger_than_smallest_dimension_is_refused(tiny):
    model, head = tiny
    with pytest.raises(ConfigError, match="method.rank=17 is larger than the smallest adapted dimension \\(16\\)"):
        apply_method(model, MethodConfig(name="lora", rank=17), head)
