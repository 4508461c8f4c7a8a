"""analysis/measures on a planted study: a study directory written by hand whose ΔW are built from basis vectors,
so that every entry of the similarity, full_energy_in_lora and intruders tables, and the intruder-forgetting
correlation, is known in closed form.

One module, ``query`` of layer 0, of shape 24 × 16 (e_i: basis of R^24, f_j: of R^16):

    W_pre   = Σ_{i<16} s_i e_i f_iᵀ with s_i = (16 − i) / 10 (1.6, 1.5, …, 0.1); rows 16–23 are zero
    ΔW_r1   = 30 e16 vᵀ,  v = (f13 + f15) / √2                                  (LoRA r = 1)
    ΔW_r4   = 3 e16 f15ᵀ + 0.8 e17 f13ᵀ + 0.2 e18 f0ᵀ + 0.1 e19 f1ᵀ              (LoRA r = 4)
    ΔW_full = 4 e2 f2ᵀ + 3 e15 f15ᵀ + 1 e16 f0ᵀ                                 (full finetuning, ‖ΔW‖² = 26)

In W_pre + ΔW_r4 and W_pre + ΔW_full every column has its own rows, so the columns are the singular directions:
column j's left singular vector leans on e_j by cos = s_j / ‖column j‖.
"""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from lora_study.artifacts import StudyDir, migrate_member

from lora_study.analysis import load_study
from lora_study.analysis.measures import Context
from lora_study.analysis.measures.forgetting import Forgetting
from lora_study.analysis.measures.intruders import Intruders
from lora_study.analysis.measures.similarity import RANDOM_DRAWS, Similarity
from lora_study.analysis.subspace import random_subspace_control

MODULE = "bert.encoder.layer.0.attention.self.query"
M, N = 24, 16


def e(i):
    return torch.eye(M, dtype=torch.float64)[i]


def f(j):
    return torch.eye(N, dtype=torch.float64)[j]


W_PRE = sum((16 - i) / 10 * torch.outer(e(i), f(i)) for i in range(16))
DELTAS = {
    "lora_r1_s0": 30 * torch.outer(e(16), (f(13) + f(15)) / math.sqrt(2)),
    "lora_r4_s0": 3 * torch.outer(e(16), f(15)) + 0.8 * torch.outer(e(17), f(13)) + 0.2 * torch.outer(e(18), f(0))
    + 0.1 * torch.outer(e(19), f(1)),
    "full_s0": 4 * torch.outer(e(2), f(2)) + 3 * torch.outer(e(15), f(15)) + torch.outer(e(16), f(0)),
}
FORGETTING = {"none_s0": 0.0, "full_s0": 0.30, "lora_r1_s0": 0.10, "lora_r4_s0": 0.20}


def _member(member: str) -> dict:
    method, rank = ("lora", int(member[6])) if member.startswith("lora") else (member[:-3], None)
    return {"id": member, "method": method, "arm": method, "axis": "rank" if rank else None, "value": rank,
            "rank": rank, "alpha": 2.0 * rank if rank else None, "d": None, "seed": 0, "lr": 0.01, "phase": "main",
            "dir": StudyDir.subdir(member), "status": "complete"}


def _summary(member: str, base: Path) -> dict:
    trained = member != "none_s0"
    return {"status": "complete", "member": member, "method": _member(member)["method"], "seed": 0, "lr": 0.01,
            "model": "planted", "task": "planted", "base_model": {"name": "planted", "path": str(base)},
            "metrics": {"test_accuracy": 0.8 if trained else 0.5}, "examples": {"test": 100},
            "params": {"trainable": 1, "total": 1, "head": 0},
            "memory": {"optimizer_state_bytes": 0, "gradient_bytes": 0, "peak_bytes": 0},
            "time": {"mean_step_s": 0.0, "tokens_per_s": 0.0}, "storage": {"bytes": 0},
            "heldout": {"forgetting_mean": FORGETTING[member], "cka": 1.0, "probe": {"n_test": 100},
                        "tasks": {"t": {"base": 0.9, "finetuned": 0.9 - FORGETTING[member],
                                        "forgetting": FORGETTING[member]}}},
            "saved": {"delta": trained, "predictions": True}}


def _predictions(member: str) -> dict:
    """Per-example held-out probe outputs of one task over 10 examples: the base gets all right, the finetuned model
    gets 10 × forgetting of them wrong, so its mean forgetting is FORGETTING[member]."""
    wrong = round(10 * FORGETTING[member])
    return {"test.correct": np.ones(100, bool), "heldout.t.base_correct": np.ones(10, bool),
            "heldout.t.finetuned_correct": np.arange(10) >= wrong}


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Context:
    root = tmp_path_factory.mktemp("planted")
    base = root / "base"
    base.mkdir()
    save_file({f"{MODULE}.weight": W_PRE.float().contiguous()}, base / "model.safetensors")
    study = StudyDir(root / "study")
    members = ["none_s0", "full_s0", "lora_r1_s0", "lora_r4_s0"]
    for member in members:
        run = study.run(member)  # written as a run writes it, through the run directory's own writers
        (run.path / ".hydra").mkdir(parents=True)
        (run.path / ".hydra" / "config.yaml").write_text("{}\n")
        run.log({"step": 0, "split": "test", "accuracy": 0.5})
        if member in DELTAS:
            run.write_delta({MODULE: DELTAS[member]})
        run.write_predictions(_predictions(member))
        run.write_summary(_summary(member, base))
    study.write_index({"name": "planted", "shared": {}, "members": [migrate_member(_member(m), i)
                                                                     for i, m in enumerate(members)]})
    st = load_study(study.path)
    assert not st.skipped and len(st.runs) == 4
    return Context(st, [Similarity(), Intruders(), Forgetting()])


def test_similarity_table_known_answers(planted):
    """ΔW_r1's one right singular vector v = (f13 + f15)/√2 against ΔW_r4's, in order f15, f13, f0, f1:
    φ(1, j) = Σ_{b≤j} (v · u_b)² = 0.5, 1, 1, 1, so φ(1, 1) = 0.5 and the grid's mean is 3.5 / 4. The planted runs
    saved no adapters, so φ is on ΔW's right singular vectors (Hu et al.'s, from A, needs lora_A)."""
    sim = planted.table("similarity").set_index("basis")
    assert set(sim.index) == {"ΔW", "random"} and (sim.arm == "lora").all()
    assert (sim.small == 1).all() and (sim.large == 4).all() and (sim.seed_a == 0).all()
    assert sim.loc["ΔW"].kind == "query" and sim.loc["ΔW"].compares == "ranks"
    q = sim.loc["ΔW"]
    assert q.phi_1_1 == pytest.approx(0.5, abs=1e-6)
    assert q.phi_diag_mean == pytest.approx(0.5, abs=1e-6)  # a 1 × 4 grid has one diagonal entry
    assert q.phi_mean == pytest.approx(0.875, abs=1e-6)
    # the control: random subspaces of R^16, averaged over RANDOM_DRAWS pairs
    control = np.mean([np.asarray(random_subspace_control(N, 1, 4, seed=i)) for i in range(RANDOM_DRAWS)], axis=0)
    assert sim.loc["random"].phi_1_1 == pytest.approx(control[0, 0]) and sim.loc["random"].phi_mean == pytest.approx(
        control.mean())


def test_energy_of_full_ft_in_each_lora_subspace_known_answers(planted):
    """Of ‖ΔW_full‖² = 16 + 9 + 1 = 26: r = 1 (columns e16, rows v): 1 in its column space (row 16), 9 · ½ in its
    row space (3 e15 f15ᵀ against v), 0 in both; r = 4 (columns e16–e19, rows f15, f13, f0, f1): 1, 9 + 1, 1."""
    t = planted.table("full_energy_in_lora").set_index("member")
    assert list(t.index) == ["lora_r1_s0", "lora_r4_s0"] and list(t["rank"]) == [1, 4] and (t.modules == 1).all()
    expected = {"lora_r1_s0": (1 / 26, 4.5 / 26, 0.0, 1 / 24, 1 / 16),
                "lora_r4_s0": (1 / 26, 10 / 26, 1 / 26, 4 / 24, 4 / 16)}
    for member, values in expected.items():
        got = tuple(t.loc[member, ["col", "row", "both", "random_col", "random_row"]])
        assert got == pytest.approx(values, abs=1e-6), member


def test_intruders_table_known_answers(planted):
    """Top 10 singular vectors of W_pre + ΔW against all of W_pre's (left side):
    r = 1: the new top direction ≈ e16 (cos ≈ 0.007): 1 intruder at every ε;
    r = 4: e16 beside 0.1 e15 (cos 0.1 / √9.01 = 0.033) at every ε, and 0.3 e13 + 0.8 e17 (cos 0.3 / √0.73 = 0.351,
           the 10th singular value, 0.854 > 0.8) from ε = 0.4; the columns of f0, f1 keep cos > 0.99;
    full: e2 and e15 scaled in place (cos 1); 1.6 e0 + e16 has cos 1.6 / √3.56 = 0.848: an intruder at ε = 0.9 only."""
    t = planted.table("intruders")
    assert set(t.scope) == {"all"}  # no summary names LoRA's targets: every matrix full FT saved
    controls, t = t[t.kind != "run"], t[t.kind == "run"]
    counts = t.pivot(index="member", columns="eps", values="intruders")
    eps = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    assert list(counts.columns) == pytest.approx(eps)
    assert counts.loc["lora_r1_s0"].tolist() == [1] * 9
    assert counts.loc["lora_r4_s0"].tolist() == [1, 1, 1, 2, 2, 2, 2, 2, 2]
    assert counts.loc["full_s0"].tolist() == [0] * 8 + [1]
    assert set(t.matrices) == {1} and set(t.vectors) == {10} and "none_s0" not in set(t.member)  # runs with a ΔW
    assert (t.rate == t.intruders / 10).all()
    assert set(controls.member) == {"lora_r1_s0:control", "lora_r4_s0:control"}  # a random control per LoRA run
    assert t.set_index(["member", "eps"]).rel_update.loc[("full_s0", 0.5)] == pytest.approx(
        math.sqrt(26) / float(W_PRE.norm()))


def test_intruder_forgetting_correlation_known_answer(planted):
    """At ε = 0.5 the finetuned runs have 0 (full), 1 (r = 1), 2 (r = 4) intruders and forgot 0.30, 0.10, 0.20:
    ranks (1, 2, 3) against (3, 1, 2), Σd² = 6, ρ = 1 − 6 · 6 / (3 · 8) = −0.5; with n = 3 the t statistic
    ρ √(1 / (1 − ρ²)) = −1/√3 has one degree of freedom (Cauchy): p = 1 − 2 atan(1/√3) / π = 2/3. The frozen
    base, which has no ΔW, takes no part."""
    from lora_study.analysis.measures.intruders import correlation
    corr = correlation(planted.study, planted.table("intruders"))
    assert corr["n"] == 3 and corr["eps"] == 0.5 and corr["scope"] == "all"
    assert corr["rho"] == pytest.approx(-0.5, abs=1e-12) and corr["p"] == pytest.approx(2 / 3, abs=1e-9)


class _Tables:
    """A stand-in for a Context holding given tables."""

    def __init__(self, **tables):
        self.tables = tables

    def table(self, name):
        return self.tables[name]


def _scaling_row(arm, value, intruders, change, low, high):
    return {"arm": arm, "title": "full FT" if arm == "full" else "LoRA", "value": value, "intruders": intruders,
            "forgetting_change": change, "forgetting_change_low": low, "forgetting_change_high": high}


@pytest.mark.parametrize("lora_high, verdict", [(-0.01, "holds"), (0.02, "unresolved")])
def test_intruder_scaling_verdict_reads_only_runs_with_intruders_to_scale(lora_high, verdict):
    """Full FT with no intruder scales nothing (change 0 [0, 0] by construction): it must not keep the verdict from
    holding when every run that had intruders forgets less once they are scaled down."""
    import pandas as pd
    from lora_study.analysis.measures.verdicts import intruder_claims
    _NO_TARGETS = pd.DataFrame({"scope": ["all"], "eps": [0.5], "kind": ["run"], "reference": [True],
                                "axis": [None], "rank": [None]})  # no arm's targets: no rate comparison
    scaling = pd.DataFrame([_scaling_row("full", None, 0, 0.0, 0.0, 0.0),
                            _scaling_row("lora", 1.0, 5, -0.03, -0.06, lora_high)])
    runs = pd.DataFrame()
    row = next(c for c in intruder_claims(_Tables(intruders=_NO_TARGETS, intruder_scaling=scaling, runs=runs), {})
               if c.claim == "scaling intruders down cuts forgetting")
    assert row.verdict == verdict and "full FT" not in row.measured and "LoRA r=1: -0.030" in row.measured
    none = pd.DataFrame([_scaling_row("full", None, 0, 0.0, 0.0, 0.0)])
    assert not [c for c in intruder_claims(_Tables(intruders=_NO_TARGETS, intruder_scaling=none, runs=runs), {})
                if c.claim == "scaling intruders down cuts forgetting"]
