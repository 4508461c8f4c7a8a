"""SubspaceModel: intrinsic-dimension (DID) and SAID finetuning of tiny in-process transformers."""
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

from lora_study.methods.intrinsic import OUTSIDE_BLOCKS, SubspaceModel, layer_group

PROJECTIONS = ["fastfood", "dense", "sparse"]


def tiny_bert(seed=0, **overrides):
    torch.manual_seed(seed)
    config = dict(vocab_size=100, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    return BertForSequenceClassification(BertConfig(**{**config, **overrides})).eval()


def tiny_llama(seed=0):
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True)
    return LlamaForCausalLM(config).eval()


def tokens(vocab=100, shape=(4, 7), seed=1):
    return torch.randint(1, vocab, shape, generator=torch.Generator().manual_seed(seed))


def perturb(sub, seed=2):
    """Move θ_d (and λ) away from their initial values, so that update checks are not trivially true."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sub.theta_d.copy_(torch.randn(sub.theta_d.shape, generator=gen))
        if sub.said:
            sub.lambdas.copy_(torch.rand(sub.lambdas.shape, generator=gen) + 0.5)


@pytest.mark.parametrize("said", [False, True])
@pytest.mark.parametrize("projection", PROJECTIONS)
def test_step_zero_equals_base_model(projection, said):
    model, x = tiny_bert(), tokens()
    expected = model(input_ids=x).logits
    sub = SubspaceModel(model, 200, projection=projection, said=said)
    assert torch.equal(sub(input_ids=x).logits, expected)
    perturb(sub)  # and the update is really applied once θ_d moves
    assert not torch.allclose(sub(input_ids=x).logits, expected)


def test_llama_tied_embeddings_grouping_and_merge():
    model, x = tiny_llama(), tokens(64)
    expected = model(input_ids=x).logits
    sub = SubspaceModel(model, 100, said=True, direct_trainable=())
    assert torch.equal(sub(input_ids=x).logits, expected)
    assert sub.D == sum(p.numel() for p in model.parameters())  # the tied lm_head counts once
    assert sub.group_names == [OUTSIDE_BLOCKS, "model.layers.0", "model.layers.1"]
    perturb(sub)
    wrapped = sub(input_ids=x).logits
    merged = sub.merge_into_base()
    assert merged.lm_head.weight is merged.model.embed_tokens.weight
    torch.testing.assert_close(merged(input_ids=x).logits, wrapped)


def test_layer_group_names():
    assert layer_group("bert.encoder.layer.3.attention.self.query.weight") == "bert.encoder.layer.3"
    assert layer_group("model.layers.11.mlp.up_proj.weight") == "model.layers.11"
    assert layer_group("transformer.h.0.attn.c_attn.weight") == "transformer.h.0"
    assert layer_group("bert.embeddings.word_embeddings.weight") == OUTSIDE_BLOCKS
    assert layer_group("bert.encoder.layer_norm.weight") == OUTSIDE_BLOCKS


def test_scope_and_direct_parameters():
    model = tiny_bert()
    sub = SubspaceModel(model, 50, exclude_embeddings=True)
    names = sub.scoped_names
    assert not any("embeddings" in n or "classifier" in n for n in names)
    assert sub.D == sum(p.numel() for n, p in model.named_parameters() if n in names)
    assert sub.num_direct_params == 16 * 2 + 2
    trainable = sub.trainable_parameters()
    assert trainable[0] is sub.theta_d and {id(p) for p in trainable[1:]} == {
        id(model.classifier.weight), id(model.classifier.bias)}
    assert [p for p in sub.parameters() if p.requires_grad] == trainable
    perturb(sub)
    state = sub.merged_state_dict()
    for n, p in model.named_parameters():
        if "embeddings" in n:
            assert torch.equal(state[n], p)


def test_constructor_errors():
    with pytest.raises(ValueError, match="Unknown projection 'fast'"):
        SubspaceModel(tiny_bert(), 10, projection="fast")
    with pytest.raises(ValueError, match="d=3 must exceed the number of SAID scales m=3"):
        SubspaceModel(tiny_bert(), 3, said=True)
    with pytest.warns(UserWarning, match="'classifer' matches no parameter"):
        SubspaceModel(tiny_bert(), 10, direct_trainable=("classifer",))


def test_too_large_dense_projection_is_refused_before_anything_changes():
    model = tiny_bert()
    with pytest.raises(ValueError, match=r"dense projection with D=14,576 and d=1,000 needs 58,304,000 bytes.*fastfood"):
        SubspaceModel(model, 1000, projection="dense", max_bytes=10**6)
    assert all(p.requires_grad for p in model.parameters())


def test_said_budget_and_gradients():
    model, x = tiny_bert(), tokens()
    labels = torch.tensor([0, 1, 1, 0])
    sub = SubspaceModel(model, 64, said=True)
    m = len(sub.group_names)
    assert m == 3  # outside blocks, layer 0, layer 1
    assert sub.num_subspace_params == 64 == sub.theta_d.numel() + sub.lambdas.numel()
    assert sub.projection.d == 64 - m
    opt = torch.optim.Adam(sub.trainable_parameters(), lr=1e-2)
    sub(input_ids=x, labels=labels).loss.backward()
    assert sub.theta_d.grad.abs().sum() > 0  # λ = 1 at init lets θ_d learn from step 0
    assert torch.equal(sub.lambdas.grad, torch.zeros(m))  # ∂/∂λ = <P θ_d, g> = 0 while θ_d = 0
    opt.step()
    opt.zero_grad()
    sub(input_ids=x, labels=labels).loss.backward()
    assert sub.theta_d.grad.abs().sum() > 0
    assert (sub.lambdas.grad != 0).all()


def test_said_scales_act_per_layer():
    sub = SubspaceModel(tiny_bert(), 64, said=True)
    perturb(sub)
    with torch.no_grad():
        sub.lambdas[sub.group_names.index("bert.encoder.layer.0")] = 0.0
    for name, delta in sub.deltas().items():
        assert (delta.abs().max() == 0) == name.startswith("bert.encoder.layer.0."), name


@pytest.mark.parametrize("said", [False, True])
def test_deltas_equal_merged_minus_base(said):
    model = tiny_bert()
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    sub = SubspaceModel(model, 100, said=said)
    perturb(sub)
    deltas, merged = sub.deltas(), sub.merged_state_dict()
    assert set(deltas) == {n for n in sub.scoped_names if base[n].dim() == 2}
    for name, delta in deltas.items():
        assert delta.dtype == torch.float32 and not delta.requires_grad and delta.abs().max() > 0
        torch.testing.assert_close(merged[name] - base[name], delta)
    assert torch.equal(merged["classifier.weight"], base["classifier.weight"])
    query = "bert.encoder.layer.1.attention.self.query.weight"
    assert list(sub.deltas([query])) == [query]
    with pytest.raises(ValueError, match="No 2-D weight in the subspace scope is named 'classifier.weight'"):
        sub.deltas(["classifier.weight"])


def test_merge_into_base_returns_plain_model_with_same_outputs():
    model, x = tiny_bert(), tokens()
    sub = SubspaceModel(model, 100, projection="sparse")
    perturb(sub)
    wrapped = sub(input_ids=x).logits
    merged = sub.merge_into_base()
    assert merged is model and all(p.requires_grad for p in merged.parameters())
    torch.testing.assert_close(merged(input_ids=x).logits, wrapped)
    with pytest.raises(RuntimeError, match="merged"):
        sub(input_ids=x)


def test_projection_is_rebuilt_from_seed_not_saved():
    x = tokens()
    sub = SubspaceModel(tiny_bert(), 100, seed=7)
    perturb(sub)
    state = sub.state_dict()
    assert not any(k.startswith("projection.") for k in state)
    again = SubspaceModel(tiny_bert(), 100, seed=7)
    again.load_state_dict(state)
    assert torch.equal(again(input_ids=x).logits, sub(input_ids=x).logits)


def test_passes_through_model_attributes():
    model = tiny_bert()
    sub = SubspaceModel(model, 10)
    assert sub.config is model.config and sub.num_labels == 2
    with pytest.raises(AttributeError, match="merge_into_base"):
        sub.save_pretrained


def _memorise(model, params, x, labels, steps=40, lr=1e-2):
    opt = torch.optim.Adam(params, lr=lr)
    for _ in range(steps):
        loss = model(input_ids=x, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        out = model(input_ids=x, labels=labels)
    return out.loss.item(), (out.logits.argmax(-1) == labels).float().mean().item()


def test_full_rank_dense_subspace_fits_what_full_finetuning_fits():
    # Every weight, the head included, goes through P; with d = D the subspace is the whole space.
    kwargs = dict(vocab_size=20, hidden_size=8, num_attention_heads=2, num_hidden_layers=1, intermediate_size=16,
                  max_position_embeddings=8, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    x, labels = tokens(20, (12, 6)), torch.randint(0, 2, (12,), generator=torch.Generator().manual_seed(3))
    full = tiny_bert(**kwargs)
    start = full(input_ids=x, labels=labels).loss.item()
    full_loss, full_acc = _memorise(full, full.parameters(), x, labels)
    model = tiny_bert(**kwargs)
    D = sum(p.numel() for p in model.parameters())
    sub = SubspaceModel(model, D, projection="dense", direct_trainable=())
    assert sub.D == D and sub.num_direct_params == 0
    sub_loss, sub_acc = _memorise(sub, sub.trainable_parameters(), x, labels)
    assert full_acc == 1.0 and full_loss < 0.05 < start
    assert sub_acc == 1.0 and sub_loss < 0.05, (sub_loss, full_loss)
    small = SubspaceModel(tiny_bert(**kwargs), 10, projection="dense", direct_trainable=())
    small_loss, _ = _memorise(small, small.trainable_parameters(), x, labels)
    assert small_loss > 0.3  # the control: the task is not fitted by any subspace at all


def test_said_one_scale_per_tensor():
    model, x = tiny_bert(), tokens()
    expected = model(input_ids=x).logits
    sub = SubspaceModel(model, 200, said=True, said_groups="tensor")
    assert sub.lambdas.numel() == len(sub.scoped_names) == sub.d - sub.theta_d.numel()
    assert torch.equal(sub(input_ids=x).logits, expected)


def test_gradient_checkpointing_is_refused_in_training():
    model, x = tiny_bert(), tokens()
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()  # transformers 5 renamed it
    sub = SubspaceModel(model, 50).train()
    with pytest.raises(RuntimeError, match="gradient checkpointing"):
        sub(input_ids=x)


def test_param_groups_give_listed_parameters_their_own_rate():
    from lora_study.config import OptimConfig
    from lora_study.run.train import make_optimizer, param_groups
    a, b, c = (torch.nn.Parameter(torch.zeros(2)) for _ in range(3))
    assert param_groups([a, b]) == [a, b]
    opt = make_optimizer(param_groups([a, b, c], {id(c): 0.3}), OptimConfig(lr=1e-2))
    rates = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert rates == {id(a): 1e-2, id(b): 1e-2, id(c): 0.3}
