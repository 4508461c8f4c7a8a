"""The analysis of a tiny-model study that learned (full finetuning beats the frozen base, LoRA lies between), through
the command line once and in-process otherwise: its tables against the runs' own artifacts, the branches that
draw a conclusion, bad input and skipped runs, and its extension points: a measure or a rank-swept method
registered inside a test flows through the analysis and the report."""
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import cli
from lora_study.analysis import load_study
from lora_study.artifacts import ArtifactError

MEMBERS = {"none_s0", "full_s0", "lora_r1_s0", "lora_r2_s0", "lora_r4_s0"}


def summary(study: Path, member: str) -> dict:
    return json.loads((study / "runs" / member / "summary.json").read_text())


def accuracy(study: Path, member: str) -> float:
    return summary(study, member)["metrics"]["test_accuracy"]


def test_the_tiny_study_learns(tiny_study):
    """The premise of every conclusion below: full finetuning beats the frozen base by far more than two binomial
    standard errors (and a paired McNemar test agrees), LoRA learns part of the task, and the runs differ."""
    from lora_study.analysis.stats import mcnemar_exact, unpaired_difference_se
    st = load_study(tiny_study)
    n = summary(tiny_study, "full_s0")["examples"]["test"]
    full, base = accuracy(tiny_study, "full_s0"), accuracy(tiny_study, "none_s0")
    assert n == 200 and base == 0.5  # a balanced test split, and a base that has learnt nothing
    assert full - base > 5 * unpaired_difference_se(full, base, n, n)
    correct = {m: st.run(m).dir.predictions()["test.correct"] for m in MEMBERS}
    assert mcnemar_exact(correct["full_s0"], correct["none_s0"])["p_value"] < 1e-20
    lora = {m: accuracy(tiny_study, m) for m in MEMBERS if m.startswith("lora")}
    best = max(lora.values())
    assert best - base > 2 * unpaired_difference_se(best, base, n, n)  # LoRA learns ...
    assert full - best > 2 * unpaired_difference_se(full, best, n, n)  # ... part of what full finetuning learns
    assert len({accuracy(tiny_study, m) for m in MEMBERS}) >= 3


@pytest.fixture(scope="module")
def analysed(tiny_study, tmp_path_factory):
    """A copy of the tiny study analysed by the console script: lora-study-analyze's one command-line case."""
    dst = tmp_path_factory.mktemp("analysed") / "tiny"
    shutil.copytree(tiny_study, dst, ignore=shutil.ignore_patterns("analysis", "report"))
    r = cli("lora-study-analyze", str(dst))
    assert r.returncode == 0, r.stderr[-2000:]
    m = re.search(r"analysed 5 runs of tiny in [\d.]+ s: (\d+) tables, (\d+) figures", r.stdout)
    assert m, r.stdout
    out = dst / "analysis"  # the counts printed are the files written, one CSV and parquet per table, PNG and PDF per figure
    assert int(m[1]) == len(list(out.glob("*.csv"))) == len(list(out.glob("*.parquet"))) >= 15
    assert int(m[2]) == len(list(out.glob("*.png"))) == len(list(out.glob("*.pdf"))) >= 12
    return dst


def table(analysed: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(analysed / "analysis" / f"{name}.csv")


def test_analyze_cli_writes_tables_and_figures(analysed):
    out = analysed / "analysis"
    for t in ("runs", "tradeoff", "spectra", "truncation", "similarity", "amplification", "intruders",
              "full_energy_in_lora", "forgetting"):
        csv, parquet = pd.read_csv(out / f"{t}.csv"), pd.read_parquet(out / f"{t}.parquet")
        assert len(csv) > 0 and len(parquet) == len(csv), t  # written, and not left empty by a swallowed error
    for f in ("spectra", "cumulative_energy", "rank90_heatmap", "similarity", "intruders", "truncation",
              "forgetting_vs_rank", "pareto"):
        assert (out / f"{f}.png").stat().st_size > 1000 and (out / f"{f}.pdf").exists(), f
    spectra = pd.read_parquet(out / "spectra.parquet")
    lora = spectra[spectra.axis == "rank"]
    assert set(lora.arm) == {"lora"} and (lora["value"] == lora["rank"]).all()
    assert (lora.rank90 <= lora["rank"]).all()  # a rank-r update has at most r directions
    assert set(spectra.kind) == {"query", "key", "value", "attn_out", "ffn_in", "ffn_out"}
    runs = pd.read_parquet(out / "runs.parquet")
    assert set(runs.member) == MEMBERS
    assert json.loads((out / "analysis.json").read_text())["skipped"] == {}


def test_truncation_table_keeps_a_finite_share_of_a_real_gain(analysed):
    """Each entry is the reference run's own measurement in its scope, and the share of full finetuning's gain it
    keeps is (acc − base) / (full − base): finite, because this study has a gain; trained minus truncated pairs each
    LoRA run with the entry at its rank."""
    t = table(analysed, "truncation")
    full, base = accuracy(analysed, "full_s0"), accuracy(analysed, "none_s0")
    scopes = summary(analysed, "full_s0")["truncation"]["scopes"]
    assert set(scopes) == {"finetuned_rest", "pretrained_rest", "targets_only"}
    assert len(t) == sum(len(e["ranks"]) for e in scopes.values()) == 9 and (t.seeds == 1).all()
    for scope, e in scopes.items():
        for entry in e["ranks"]:
            row = t[(t.scope == scope) & (t.k == entry["k"])].iloc[0]
            assert row["mean"] == entry["test_accuracy"] and row.full_mean == full
            assert row.gain_kept == pytest.approx((entry["test_accuracy"] - base) / (full - base), abs=1e-12)
    assert np.isfinite(t.gain_kept).all()
    own = t[t.scope == "finetuned_rest"].set_index("k")["mean"]
    assert own[0] != own[max(own.index)]  # removing ΔW matters: the entries are not all equal
    assert own[0] == base  # every analysed ΔW removed, the rest finetuned: all of the gain was in those matrices
    pairs = table(analysed, "trained_vs_truncated")
    assert set(pairs.scope) == set(scopes) and set(pairs["rank"]) == {1, 2}  # k = 4 was not truncated
    for row in pairs.itertuples():
        assert row.trained == accuracy(analysed, f"lora_r{row.rank}_s0")
        assert row.truncated == t[(t.scope == row.scope) & (t.k == row.rank)]["mean"].iloc[0]
        assert row.diff == pytest.approx(row.trained - row.truncated, abs=1e-12)
        assert row.diff_low <= row.diff <= row.diff_high


def _top_right(d: torch.Tensor, k: int) -> np.ndarray:
    """The top-k right singular vectors of ΔW, by numpy (not the suite's own SVD), as columns."""
    return np.linalg.svd(d.double().numpy())[2][:k].T


def _lora_a(run: Path, module: str) -> torch.Tensor:
    from safetensors.torch import load_file
    weights = load_file(run / "adapter" / "adapter_model.safetensors")
    return next(v for k, v in weights.items() if k.endswith(f"{module}.lora_A.weight"))


def test_similarity_and_energy_tables_match_the_deltas(analysed):
    """φ(1, 1) between LoRA r = 1 and r = 4 is (v₁ · v₁')², from the adapters' A (Hu et al.) and from ΔW, per
    matrix; the energy of full FT's ΔW in each run's row space is ‖ΔW_full V_r‖² / ‖ΔW_full‖² averaged over
    modules: all recomputed here with numpy from the saved files."""
    st = load_study(analysed)
    sim = table(analysed, "similarity")
    assert set(sim.basis) == {"A", "ΔW", "random"} and set(zip(sim.small, sim.large)) == {(1, 4), (2, 4)}
    sim = sim[(sim.small == 1) & (sim.large == 4)]  # each rank against the largest
    mods = st.run("lora_r1_s0").dir.delta_names()
    assert len(mods) == 4
    for basis in ("A", "ΔW"):
        rows = sim[sim.basis == basis].set_index("module")
        assert set(rows.index) == set(mods) and set(rows.kind) == {"query", "value"}
        for m in mods:
            if basis == "A":
                a, b = (_lora_a(analysed / "runs" / r, m) for r in ("lora_r1_s0", "lora_r4_s0"))
            else:
                a, b = st.delta("lora_r1_s0", m), st.delta("lora_r4_s0", m)
            phi = float(_top_right(a, 1)[:, 0] @ _top_right(b, 1)[:, 0]) ** 2
            assert rows.phi_1_1[m] == pytest.approx(phi, abs=1e-6), (basis, m)
            assert rows.phi_mean[m] >= rows.phi_1_1[m] - 1e-9  # φ(1, j) grows with j
    rnd = sim[sim.basis == "random"]
    assert (rnd.phi_1_1 < sim[sim.basis == "A"].phi_1_1.mean()).all()  # the control sits below the learned spans
    energy = table(analysed, "full_energy_in_lora").set_index("member")
    assert list(energy.index) == ["lora_r1_s0", "lora_r2_s0", "lora_r4_s0"] and (energy.modules == 4).all()
    for member, rank in (("lora_r1_s0", 1), ("lora_r4_s0", 4)):
        shares = []
        for m in st.run(member).dir.delta_names():
            full = st.delta("full_s0", m).double().numpy()
            shares.append(np.linalg.norm(full @ _top_right(st.delta(member, m), rank)) ** 2 / np.linalg.norm(full) ** 2)
        assert energy.row[member] == pytest.approx(np.mean(shares), abs=1e-6)
        assert energy.random_row[member] == rank / 16  # a random r-dimensional space of R^16


def test_intruders_grow_with_epsilon_and_correlate_with_forgetting(analysed):
    """On LoRA's targets (the like-for-like scope) the count is monotone in ε (cos < ε) and summed over the same
    4 matrices for every run; full FT alone has the all-linear scope; the Spearman correlation with forgetting is
    over the four finetuned runs' rates."""
    from scipy.stats import spearmanr
    intr = table(analysed, "intruders")
    runs = intr[intr.kind == "run"]
    assert set(runs.scope) == {"targets:lora", "all"}
    assert set(runs[runs.scope == "all"].member) == {"full_s0"} and set(runs[runs.scope == "all"].matrices) == {12}
    like = runs[runs.scope == "targets:lora"]
    counts = like.pivot(index="member", columns="eps", values="intruders")
    assert set(counts.index) == MEMBERS - {"none_s0"} and set(like.matrices) == {4} and set(like.vectors) == {40}
    assert (counts.diff(axis=1).fillna(0) >= 0).all().all() and (counts[0.9] > counts[0.1]).all()
    controls = intr[intr.kind != "run"]
    assert set(controls.member) == {f"lora_r{r}_s0:control" for r in (1, 2, 4)}
    from lora_study.analysis.measures.forgetting import accuracy_tasks, forgetting_scores, informative
    corr = json.loads((analysed / "analysis" / "analysis.json").read_text())["intruders_vs_forgetting"]
    st = load_study(analysed)
    # the forgetting it reads: the informative tasks only (the tiny model's party probe sits at chance)
    tasks = [t for t in accuracy_tasks(st) if informative(st, t)[0]]
    assert "political_party" in accuracy_tasks(st) and "political_party" not in tasks and tasks
    members = sorted(MEMBERS - {"none_s0"})
    forget = pd.Series({m: forgetting_scores([st.run(m)], tasks)[0].mean() for m in members})
    rate = like[like.eps == 0.5].set_index("member").rate
    rho, p = spearmanr(rate[members], forget[members])
    assert corr["n"] == 4 and corr["eps"] == 0.5 and corr["scope"] == "targets:lora"
    assert corr["rho"] == pytest.approx(rho) and corr["p"] == pytest.approx(p)


def test_load_study_api(tiny_study):
    from conftest import load_model
    st = load_study(tiny_study)
    assert {r.member for r in st.runs} == MEMBERS
    mods = st.modules("full_s0")
    name = mods.module.iloc[0]
    d = st.delta("full_s0", name)
    s = st.spectrum("full_s0")[name]
    assert torch.allclose(torch.linalg.svdvals(d), s, atol=1e-5)
    cfg = st.run("full_s0").dir.config()
    from lora_study.config import ModelConfig
    base = load_model(ModelConfig(**{k: v for k, v in cfg["model"].items()})).model
    assert torch.equal(st.base_weight(name), base.get_submodule(name).weight)  # W_pre, read from the base's own file
    m = st.metrics("lora_r2_s0")
    assert list(m[m.split == "validation"].step) == [30, 60]
    assert m[m.split == "test"].accuracy.iloc[-1] == accuracy(tiny_study, "lora_r2_s0")
    assert st.arms("rank") == ["lora"] and st.values("lora") == [1, 2, 4] and st.arms("d") == []
    assert [r.member for r in st.baselines()] == ["none_s0"] and st.reference(0).member == "full_s0"
    assert st.find("lora", 0, 2).member == "lora_r2_s0" and st.find("lora", 0, 8) is None


def analyze_in_process(path, capsys):
    """``lora-study-analyze PATH`` in this process: (exit code, stderr)."""
    from lora_study.analysis.analyze import main
    try:
        main([str(path)])
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def test_not_a_study_is_one_sentence(tmp_path, capsys):
    code, err = analyze_in_process(tmp_path, capsys)
    assert (code, err) == (2, f"error: {tmp_path} is not a study directory (it has no study.json).\n")
    with pytest.raises(ArtifactError):
        load_study(tmp_path)


def test_study_without_complete_runs(study_copy, capsys):
    for s in study_copy.glob("runs/*/summary.json"):
        s.unlink()
    code, err = analyze_in_process(study_copy, capsys)
    assert code == 2 and err == f"error: {study_copy} has no complete runs to analyse.\n"
    assert not (study_copy / "analysis").exists()


def test_corrupt_delta_is_skipped_and_the_rest_analysed(study_copy, capsys):
    p = study_copy / "runs" / "lora_r2_s0" / "delta.safetensors"
    p.write_bytes(p.read_bytes()[:100])  # cut short
    code, err = analyze_in_process(study_copy, capsys)
    assert code == 0, err
    assert "skipped lora_r2_s0: delta.safetensors is unreadable" in err
    runs = pd.read_csv(study_copy / "analysis" / "runs.csv")
    assert set(runs.member) == MEMBERS - {"lora_r2_s0"}
    assert set(pd.read_csv(study_copy / "analysis" / "full_energy_in_lora.csv").member) == {"lora_r1_s0", "lora_r4_s0"}


def test_delta_of_a_module_missing_from_the_base_is_skipped(study_copy, capsys):
    from safetensors.torch import load_file, save_file
    for name in ("delta.safetensors", "spectrum.safetensors"):
        p = study_copy / "runs" / "lora_r4_s0" / name
        t = load_file(p)
        t["bert.encoder.layer.9.attention.self.query"] = next(iter(t.values())).clone()
        save_file(t, p, metadata={"schema_version": "1"})
    code, err = analyze_in_process(study_copy, capsys)
    assert code == 0, err
    why = "module bert.encoder.layer.9.attention.self.query has no weight in the base model"
    assert f"skipped lora_r4_s0: {why}" in err
    meta = json.loads((study_copy / "analysis" / "analysis.json").read_text())
    assert list(meta["skipped"]) == ["lora_r4_s0"] and meta["skipped"]["lora_r4_s0"].startswith(why)
    assert "lora_r4_s0" not in set(pd.read_csv(study_copy / "analysis" / "intruders.csv").member)
    assert "lora_r2_s0" in set(pd.read_csv(study_copy / "analysis" / "intruders.csv").member)


def test_run_labels_sort_by_role_then_the_studys_arm_order_then_value_numerically():
    from lora_study.analysis.loader import label_key
    from lora_study.analysis.roles import ordered_labels
    from lora_study.artifacts import migrate_member
    order = {"none": 0, "full": 1, "lora": 2, "qlora": 3, "subspace_did": 4, "subspace_said": 5}
    records = [{"method": "lora", "arm": "lora", "rank": 16}, {"method": "full"},
               {"method": "subspace", "arm": "subspace_said", "d": 10, "said": True},
               {"method": "lora", "arm": "lora", "rank": 2}, {"method": "none"},
               {"method": "subspace", "arm": "subspace_did", "d": 100, "said": False},
               {"method": "subspace", "arm": "subspace_did", "d": 32, "said": False},
               {"method": "qlora", "arm": "qlora", "rank": 4}]
    records = [migrate_member(r, order[r.get("arm") or r["method"]]) for r in records]  # placements as recorded
    expected = ["frozen base", "full FT", "LoRA r=2", "LoRA r=16", "QLoRA r=4",
                "subspace DID d=32", "subspace DID d=100", "subspace SAID d=10"]
    assert [r["label"] for r in sorted(records, key=label_key)] == expected
    assert ordered_labels(pd.DataFrame(records)) == expected


ANALYSIS = Path(__file__).resolve().parent.parent / "analysis"


def _name_tests(source: str) -> list:
    """Line numbers where ``source`` tests a registered method's name or title, or a task family, as a string: a
    comparison or membership test against one, a label matched or cut (startswith, replace, …) or a registry
    entry fetched by one, a member id spelt by hand ("full_s0", f"lora_r{r}_s{seed}"), or the old name-based study
    API (by_method, lora_ranks). Docstrings and comments are not code and are not searched."""
    import ast

    from lora_study import methods, tasks
    names = set(methods.names()) | set(tasks.names())
    words = names | {methods.get(n).title for n in methods.names()}
    alt = "|".join(re.escape(n) for n in sorted(names))
    member = re.compile(rf"^(?:{alt})_[a-z]\d*$")  # "full_s0", or the "lora_r" that opens an f-string

    def strings(node):
        return [n.value.strip() for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]

    hits = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare) and set(strings(node)) & words:
            hits.append(node.lineno)  # method == "lora", "none" != m, m in ("lora", "full")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
                "startswith", "endswith", "replace", "get", "isin", "eq", "ne", "index", "count") and \
                any(set(strings(arg)) & words for arg in node.args):
            hits.append(node.lineno)  # label.startswith("LoRA"), t.get("full FT"), f.method.isin(["qlora"])
        elif isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant) and \
                member.match(str(node.values[0].value)):
            hits.append(node.lineno)  # f"lora_r{rank}_s{seed}"
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and member.match(node.value):
            hits.append(node.lineno)  # "full_s0"
        elif isinstance(node, ast.Attribute) and node.attr in ("by_method", "lora_ranks"):
            hits.append(node.lineno)
    return sorted(set(hits))


def test_latency_batches_are_read_from_the_columns():
    import pandas as pd

    from lora_study.analysis.measures.tradeoff import latency_batches
    t = pd.DataFrame(columns=["latency_merged_batch4_s", "latency_unmerged_batch1_s", "latency_plain_batch4_s", "x"])
    assert latency_batches(t) == [1, 4]
    assert latency_batches(pd.DataFrame(columns=["test_accuracy"])) == []


def test_the_scan_finds_name_tests():
    offenders = ['lora = runs[runs.method == "lora"]', 'full = study.run(f"full_s{r.seed}")',
                 'a = study.run(f"lora_r{small}_s{seed_a}")', 'keep = r.method in ("lora", "full")', "x = 'none' != r.method",
                 'lora = {k: v for k, v in t.items() if k.startswith("LoRA")}', 'full = t.get("full FT")',
                 'ax.annotate(r.label.replace("LoRA ", ""))', 'sub = study.by_method("subspace")', 'study.lora_ranks()',
                 'keep = f[f.method.isin(["qlora"])]', 'ok = family == "causal_lm"', 'ref = study.run("full_s0")',
                 'q = methods.get("lora")', 'sub = runs[runs.method.eq("subspace") | (runs.label == "full FT")]']
    assert [o for o in offenders if not _name_tests(o)] == []
    fine = ['x = r.axis == "rank"', 'ax.errorbar(x, y, mfc="none" if variant == "SAID" else None)',
            'full = references(runs)', 'section = Section("Does LoRA reach full finetuning?", [text])',
            'def f():\n    """st.spectrum("full_s0") in a docstring is an example, not a test."""']
    assert [f for f in fine if _name_tests(f)] == []


def test_analysis_tests_no_method_name_by_string():
    found = {str(p.relative_to(ANALYSIS.parent)): _name_tests(p.read_text()) for p in sorted(ANALYSIS.rglob("*.py"))}
    assert len(found) >= 15  # the scan saw the package
    assert {k: v for k, v in found.items() if v} == {}


# ---- extension points: a measure and a rank-swept method registered inside a test ----------------

def test_a_registered_measure_flows_into_the_analysis_and_the_report(study_copy, monkeypatch):
    from lora_study.analysis import measures
    from lora_study.analysis.report import report
    from lora_study.analysis.roles import references

    class RefNorm(measures.Measure):
        """Mean ‖ΔW‖_F / ‖W‖_F of the reference, from the spectra table (so it depends on another measure)."""
        name = "ref_norm"
        tables = ("ref_norm",)

        def compute(self, ctx):
            s = references(ctx.table("spectra"))
            return {"ref_norm": s.groupby("kind", as_index=False).rel_norm.mean()}

        def sections(self, ctx):
            t = ctx.table("ref_norm")
            return [measures.Section("Reference update size", [f"Mean relative norm {t.rel_norm.mean():.4f}."],
                                     table="ref_norm")]

        def formatted(self, ctx):
            return {"ref_norm": ctx.table("ref_norm").round(4)}

    monkeypatch.setattr(measures, "MEASURES", [RefNorm()] + measures.MEASURES)  # first, before the spectra it reads
    out = report(load_study(study_copy), study_copy / "report")
    t = pd.read_csv(study_copy / "analysis" / "ref_norm.csv")
    spectra = pd.read_csv(study_copy / "analysis" / "spectra.csv")
    full = spectra[spectra.member == "full_s0"]
    assert len(t) == full.kind.nunique() and t.rel_norm.mean() == pytest.approx(full.groupby("kind").rel_norm.mean().mean())
    md = (out / "report.md").read_text()
    assert md.index("## Reference update size") < md.index("## The tradeoff")
    assert f"Mean relative norm {t.rel_norm.mean():.4f}." in md and (out / "tables" / "ref_norm.md").exists()
    assert "ref_norm" in json.loads((study_copy / "analysis" / "analysis.json").read_text())["tables"]


def test_a_registered_rank_swept_method_is_an_arm_of_every_measure(study_copy):
    """Copies of the LoRA runs recorded as a toy rank-swept method show up beside LoRA in every table, figure and
    section that compares ranks, with no analysis file edited."""
    import shutil

    from lora_study.analysis.report import report
    from lora_study import methods
    from lora_study.artifacts import member_id
    from lora_study.methods.lora import Lora

    class Toy(Lora):
        name = "toy_rank"
        title = "Toy"

    methods.register(Toy())
    try:
        idx = json.loads((study_copy / "study.json").read_text())
        extra = []
        for m in idx["members"]:
            if m["arm"] != "lora":
                continue
            toy = {**m, "method": "toy_rank", "arm": "toy_rank", "family": "toy_rank", "title": "Toy",
                   "label": f"Toy r={m['value']}", "order": m["order"] + 1,
                   "id": member_id("toy_rank", m["seed"], "rank", m["value"])}  # as the planner records a toy arm
            toy["dir"] = f"runs/{toy['id']}"
            shutil.copytree(study_copy / m["dir"], study_copy / toy["dir"])
            extra.append(toy)
        idx["members"] += extra
        (study_copy / "study.json").write_text(json.dumps(idx))
        st = load_study(study_copy)
        assert st.arms("rank") == ["lora", "toy_rank"] and st.values("toy_rank") == [1, 2, 4]
        out = report(st, study_copy / "report")
    finally:
        methods.unregister("toy_rank")
    a = study_copy / "analysis"
    versus = pd.read_csv(a / "trained_vs_truncated.csv")
    assert set(versus.arm) == {"lora", "toy_rank"}
    lora, toy = (versus[versus.arm == arm].set_index(["scope", "rank"])["diff"] for arm in ("lora", "toy_rank"))
    assert lora.equals(toy)  # the copies have the same per-example outputs as LoRA's runs
    reach = pd.read_csv(a / "reach.csv")
    lora, toy = (reach[reach.arm == arm].set_index("rank")["mean"] for arm in ("lora", "toy_rank"))
    assert len(lora) == 3 and lora.equals(toy)
    assert set(pd.read_csv(a / "smallest_rank.csv").arm) == {"lora", "toy_rank"}
    sim = pd.read_csv(a / "similarity.csv")
    assert set(sim.arm) == {"lora", "toy_rank"}
    assert sim[sim.arm == "lora"].drop(columns="arm").reset_index(drop=True).equals(
        sim[sim.arm == "toy_rank"].drop(columns="arm").reset_index(drop=True))
    assert set(pd.read_csv(a / "full_energy_in_lora.csv").arm) == {"lora", "toy_rank"}
    assert {"Toy r=1", "Toy r=2", "Toy r=4"} <= set(pd.read_csv(a / "amplification.csv").label)
    assert {"Toy r=1", "Toy r=4"} <= set(pd.read_csv(a / "intruders.csv").label)
    assert (a / "similarity.png").exists() and (a / "similarity_toy_rank.png").exists()
    trade = pd.read_csv(out / "tables" / "tradeoff.csv")
    assert list(trade[trade.arm == "toy_rank"].label) == ["Toy r=1", "Toy r=2", "Toy r=4"]
    md = (out / "report.md").read_text()
    assert "## Do Toy ranks share directions? Subspace similarity" in md and "figures/similarity_toy_rank.png" in md
    claims = {c["key"]: c for c in json.loads((out / "claims.json").read_text())}
    assert "Toy's update has rank at most r" in md and "Toy's optimizer state is" in md
    assert claims["reach:toy_rank"]["claim"] == "Toy reaches full finetuning at small rank" and \
        claims["reach:lora"]["claim"] == "LoRA reaches full finetuning at small rank"
    # claims about LoRA read the family: the toy's runs are never pooled into LoRA's
    assert all("Toy" not in c["measured"] for k, c in claims.items() if k.endswith(":lora") or ":lora:" in k)
    assert "Toy r=1" in md.split("Forgetting on held-out tasks\n")[1].split("\n## ")[0]
    assert {"Toy r=1", "Toy r=4"} <= set(pd.read_csv(out / "tables" / "tradeoff_cost_formatted.csv").method.str[:7])
    amp = pd.read_csv(out / "tables" / "amplification_formatted.csv")
    assert {"LoRA: factor (median)", "Toy: factor (median)"} <= set(amp.columns)


def test_learning_rate_evidence_from_either_key_and_none_without():
    from types import SimpleNamespace

    from lora_study.analysis.measures.learning_rate import evidence, lr_table
    runs = [SimpleNamespace(arm=a, title=t, role=r, order=o, variant=None, value=None) for a, t, r, o in
            (("full", "full FT", "reference", 1), ("lora", "LoRA", "treatment", 2), ("subspace", "subspace",
                                                                                       "treatment", 3))]
    study = lambda index: SimpleNamespace(index=index, runs=runs)  # noqa: E731
    grid = {"lora_r8": {"0.0005": 0.58, "0.0015": 0.77}, "full": {"1e-4": 0.80}, "lora_r64": {"0.0005": 0.76}}
    for index in ({"lr_evidence": grid}, {"lr_search": {"chosen": {}, "grid": grid}}):
        t = lr_table(study(index))
        assert list(dict.fromkeys(t.label)) == ["full FT", "LoRA r=8", "LoRA r=64"]  # the study's order, then rank
        assert t[t.best].set_index("label").lr.to_dict() == {"full FT": 1e-4, "LoRA r=8": 0.0015, "LoRA r=64": 0.0005}
    assert evidence(study({"lr_search": {"chosen": {"full": 1e-4}}})) is None
    assert lr_table(study({})).empty
    # a shipped grid's keys of arms this study does not have are left out
    assert list(lr_table(study({"lr_evidence": {**grid, "lora_all_r1": {"0.003": 0.79}}})).key.unique()) == \
        ["full", "lora_r8", "lora_r64"]
    # a study that searched some keys and ships the evidence of others shows both, its own search over the shipped
    shipped = {"full": {"1e-4": 0.80, "3e-4": 0.75}, "subspace_d1000": {"0.01": 0.5}}
    searched = {"subspace_d1000": {"0.01": 0.66, "0.03": 0.67}, "subspace_d100000": {"0.01": 0.70}}
    t = lr_table(study({"lr_evidence": shipped, "lr_search": {"grid": searched}}))
    assert list(dict.fromkeys(t.label)) == ["full FT", "subspace d=1000", "subspace d=100000"]
    assert t[t.label == "subspace d=1000"].set_index("lr").validation_score.to_dict() == {0.01: 0.66, 0.03: 0.67}
    from lora_study.analysis.measures.learning_rate import LearningRates, finding
    mixed = lr_table(study({"lr_evidence": grid, "lr_search": {"grid": searched}}))
    assert "per method and d;" in finding(t) and "per method and rank or d;" in finding(mixed)
    assert "per method and rank;" in finding(lr_table(study({"lr_evidence": grid})))
    assert "moves with d;" in LearningRates.caption("d")
    assert "each rank's chosen rate" in LearningRates.caption("rank")
