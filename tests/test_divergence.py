"""KL(p_base ‖ q) over the base's top k and a lumped tail: 0 exactly at q = p, the full KL at k = vocabulary, and
below it (never above) for smaller k."""
import torch

from lora_study.heldout import divergence


def _full_kl(p_logits, q_logits):
    logp, logq = torch.log_softmax(p_logits.double(), -1), torch.log_softmax(q_logits.double(), -1)
    return (logp.exp() * (logp - logq)).sum(-1)


def test_kl_is_zero_exactly_for_the_same_model_and_the_full_kl_at_k_equal_to_the_vocabulary():
    g = torch.Generator().manual_seed(0)
    p = torch.randn(40, 300, generator=g) * 3
    q = p + torch.randn(40, 300, generator=g)
    same = divergence.kl_top_k(p, *divergence.top_k(p, 16))
    assert torch.equal(same, torch.zeros(40, dtype=torch.float64))
    full = divergence.kl_top_k(q, *divergence.top_k(p, 300))
    assert torch.allclose(full, _full_kl(p, q), rtol=1e-5, atol=1e-7)


def test_kl_over_top_k_is_a_lower_bound_that_grows_with_k():
    g = torch.Generator().manual_seed(1)
    p = torch.randn(40, 300, generator=g) * 3
    q = p + torch.randn(40, 300, generator=g)
    full = _full_kl(p, q)
    ks = [1, 4, 32, 128]
    kls = [divergence.kl_top_k(q, *divergence.top_k(p, k)) for k in ks]
    for kl in kls:
        assert (kl >= -1e-9).all() and (kl <= full + 1e-6).all()
    means = [float(kl.mean()) for kl in kls]
    assert means == sorted(means) and means[0] < 0.5 * float(full.mean()) < means[-1]


def test_scored_logits_keep_only_the_labelled_next_tokens_in_row_order():
    logits = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    labels = torch.tensor([[5, 1, 2, -100], [5, 0, -100, -100]])
    scored, targets, rows = divergence.scored_logits(logits, labels)
    assert targets.tolist() == [1, 2, 0] and rows.tolist() == [0, 0, 1]
    assert torch.equal(scored, torch.stack([logits[0, 0], logits[0, 1], logits[1, 0]]))
