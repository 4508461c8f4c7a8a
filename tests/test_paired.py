"""analysis/paired.py and the replicate helpers of analysis/stats.py: per-seed scores aligned on common seeds, the
paired comparison, the interval of a share of a gain, and the identity behind paired forgetting."""
import numpy as np
import pytest

from lora_study.analysis import paired, stats


def test_replicate_means_of_one_array_are_compares_replicates():
    rng = np.random.default_rng(0)
    a, b = rng.random((3, 50)), rng.random((3, 50))
    one = stats.replicate_means({"d": a - b}, n_boot=300, seed=4)["d"]
    assert np.array_equal(one, stats._mean_replicates(a - b, 300, 4))
    both = stats.replicate_means({"a": a, "b": b}, n_boot=300, seed=4)
    assert np.allclose(both["a"] - both["b"], one)  # the same seeds and examples resampled for every array
    with pytest.raises(ValueError, match="share one"):
        stats.replicate_means({"a": a, "b": b[:, :10]})


def test_aligned_keeps_only_the_common_seeds():
    seeds, (x, y) = paired.aligned({0: np.ones(4), 2: np.zeros(4), 5: np.ones(4)}, {2: np.ones(4), 5: np.zeros(4)})
    assert seeds == [2, 5] and x.tolist() == [[0] * 4, [1] * 4] and y.tolist() == [[1] * 4, [0] * 4]
    assert paired.aligned({0: np.ones(3)}, {1: np.ones(3)}) == ([], [])


def test_compare_is_paired_and_knows_its_means():
    rng = np.random.default_rng(1)
    truth = rng.random((3, 400)) < 0.7
    flip = rng.random((3, 400)) < 0.05  # B differs from A on 5 % of examples: a paired test sees it clearly
    a = {s: truth[s].astype(float) for s in range(3)}
    b = {s: (truth[s] ^ flip[s]).astype(float) for s in range(3)}
    c = paired.compare(a, b, 0.01)
    assert c["seeds"] == [0, 1, 2] and c["mean_a"] == pytest.approx(truth.mean())
    assert c["diff"] == pytest.approx(truth.mean() - (truth ^ flip).mean())
    one = paired.compare({0: a[0]}, {0: b[0]}, 0.01)  # one seed: a paired t interval over the examples alone
    unpaired = 2 * 1.96 * stats.unpaired_difference_se(0.7, 0.7, 400, 400)  # ≈ 0.127
    assert one["ci95"][1] - one["ci95"][0] < unpaired / 2 and one["p_difference_method"].startswith("paired over examples")
    assert paired.compare(a, {7: b[0]}, 0.01) is None


def test_ratio_interval_of_a_kept_gain():
    base = {s: np.zeros(100) for s in range(2)}
    full = {s: np.r_[np.ones(80), np.zeros(20)] for s in range(2)}  # 0.8
    lora = {s: np.r_[np.ones(40), np.zeros(60)] for s in range(2)}  # 0.4: half the gain
    point, (lo, hi) = paired.ratio_interval(lora, base, full, base)
    assert point == pytest.approx(0.5) and lo < 0.5 < hi
    assert paired.ratio_interval(lora, base, base, base) is None  # no gain to keep a share of


def test_paired_forgetting_difference_is_the_difference_of_finetuned_correctness():
    rng = np.random.default_rng(2)
    base = rng.random(300) < 0.8
    lora, full = rng.random(300) < 0.75, rng.random(300) < 0.7
    f_lora, f_full = base.astype(float) - lora, base.astype(float) - full
    # forgetting(lora) − forgetting(full) = full correct − lora correct: the base's predictions cancel
    assert np.allclose(f_lora - f_full, full.astype(float) - lora)
    c = paired.compare({0: f_lora}, {0: f_full}, 0.01)
    assert c["diff"] == pytest.approx(full.mean() - lora.mean())
