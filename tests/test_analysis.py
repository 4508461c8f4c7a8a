"""The analysis CLI and loader on a tiny-model study, its handling of bad input, and its extension points: a
measure or a rank-swept method registered inside a test flows through the analysis and the report."""
import json
import re
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import cli
from analysis import load_study
from lora_study.artifacts import ArtifactError


def test_analyze_cli_writes_tables_and_figures(study_copy):
    r = cli("lora-study-analyze", str(study_copy))
    assert r.returncode == 0, r.stderr[-2000:]
    out = study_copy / "analysis"
    for t in ("runs", "tradeoff", "spectra", "truncation", "similarity", "amplification", "intruders",
              "full_energy_in_lora", "forgetting"):
        assert (out / f"{t}.csv").exists() and (out / f"{t}.parquet").exists(), t
    for f in ("spectra", "cumulative_energy", "rank90_heatmap", "similarity", "intruders", "truncation",
              "forgetting_vs_rank", "pareto"):
        assert (out / f"{f}.png").stat().st_size > 1000 and (out / f"{f}.pdf").exists(), f
    spectra = pd.read_parquet(out / "spectra.parquet")
    lora = spectra[spectra.axis == "rank"]
    assert set(lora.arm) == {"lora"} and (lora["value"] == lora["rank"]).all()
    assert (lora.rank90 <= lora["rank"]).all()  # a rank-r update has at most r directions
    assert set(spectra.kind) == {"query", "key", "value", "attn_out", "ffn_in", "ffn_out"}
    runs = pd.read_parquet(out / "runs.parquet")
    assert set(runs.member) == {"none_s0", "full_s0", "lora_r1_s0", "lora_r2_s0", "lora_r4_s0"}


def test_load_study_api(tiny_study):
    st = load_study(tiny_study)
    assert {r.member for r in st.runs} == {"none_s0", "full_s0", "lora_r1_s0", "lora_r2_s0", "lora_r4_s0"}
    mods = st.modules("full_s0")
    name = mods.module.iloc[0]
    d = st.delta("full_s0", name)
    s = st.spectrum("full_s0")[name]
    assert torch.allclose(torch.linalg.svdvals(d), s, atol=1e-5)
    assert st.base_weight(name).shape == d.shape
    assert len(st.metrics("lora_r2_s0")) > 0
    assert st.arms("rank") == ["lora"] and st.values("lora") == [1, 2, 4] and st.arms("d") == []
    assert [r.member for r in st.baselines()] == ["none_s0"] and st.reference(0).member == "full_s0"
    assert st.find("lora", 0, 2).member == "lora_r2_s0" and st.find("lora", 0, 8) is None


def test_not_a_study_is_one_sentence(tmp_path):
    r = cli("lora-study-analyze", str(tmp_path))
    assert r.returncode == 2 and "is not a study directory" in r.stderr and "Traceback" not in r.stderr
    with pytest.raises(ArtifactError):
        load_study(tmp_path)


def test_study_without_complete_runs(study_copy):
    for s in study_copy.glob("runs/*/summary.json"):
        s.unlink()
    r = cli("lora-study-analyze", str(study_copy))
    assert r.returncode == 2 and "has no complete runs" in r.stderr


def test_corrupt_delta_is_skipped_and_the_rest_analysed(study_copy):
    p = study_copy / "runs" / "lora_r2_s0" / "delta.safetensors"
    p.write_bytes(p.read_bytes()[:100])  # cut short
    r = cli("lora-study-analyze", str(study_copy))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "skipped lora_r2_s0" in r.stderr and "unreadable" in r.stderr
    runs = pd.read_csv(study_copy / "analysis" / "runs.csv")
    assert "lora_r2_s0" not in set(runs.member) and "lora_r4_s0" in set(runs.member)


def test_delta_of_a_module_missing_from_the_base_is_skipped(study_copy):
    from safetensors.torch import load_file, save_file
    for name in ("delta.safetensors", "spectrum.safetensors"):
        p = study_copy / "runs" / "lora_r4_s0" / name
        t = load_file(p)
        t["bert.encoder.layer.9.attention.self.query"] = next(iter(t.values())).clone()
        save_file(t, p, metadata={"schema_version": "1"})
    r = cli("lora-study-analyze", str(study_copy))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "skipped lora_r4_s0" in r.stderr and "has no weight in the base model" in r.stderr
    meta = json.loads((study_copy / "analysis" / "analysis.json").read_text())
    assert "lora_r4_s0" in meta["skipped"] or "lora_r4_s0" in r.stderr


def test_run_labels_sort_by_method_then_rank_numerically():
    from analysis.loader import label_key
    from analysis.roles import ordered_labels
    from lora_study import methods
    records = [{"method": "lora", "arm": "lora", "value": 16}, {"method": "full"},
               {"method": "subspace", "arm": "subspace_said", "value": 10, "said": True}, {"method": "lora", "arm": "lora", "value": 2},
               {"method": "none"}, {"method": "subspace", "arm": "subspace_did", "value": 100, "said": False},
               {"method": "subspace", "arm": "subspace_did", "value": 32, "said": False},
               {"method": "qlora", "arm": "qlora", "value": 4}]
    for r in records:  # the labels come from the registry, as the loader makes them
        axis = methods.get(r["method"]).axis
        r.update(rank=r.get("value") if axis == "rank" else None, d=r.get("value") if axis == "d" else None)
        r["label"] = methods.get(r["method"]).label(r)
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

    from analysis.measures.tradeoff import latency_batches
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
    from analysis import measures
    from analysis.report import report
    from analysis.roles import references

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

    from analysis.report import report
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
            toy = {**m, "method": "toy_rank", "arm": "toy_rank", "id": member_id("toy_rank", m["seed"], "rank", m["value"])}
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
    assert "Toy's ΔW, rank-r by construction" in md and "Toy's optimizer state is" in md
    assert "Toy minus full finetuning: r = 1" in md
    assert "Toy r=1" in md.split("Forgetting on held-out tasks\n")[1].split("\n## ")[0]
    assert {"Toy r=1", "Toy r=4"} <= set(pd.read_csv(out / "tables" / "tradeoff_cost_formatted.csv").method.str[:7])
    amp = pd.read_csv(out / "tables" / "amplification_formatted.csv")
    assert {"LoRA: factor", "Toy: factor"} <= set(amp.columns)


def test_learning_rate_evidence_from_either_key_and_none_without():
    from types import SimpleNamespace

    from analysis.measures.learning_rate import evidence, lr_table
    grid = {"lora_r8": {"0.0005": 0.58, "0.0015": 0.77}, "full": {"1e-4": 0.80}, "lora_r64": {"0.0005": 0.76}}
    for index in ({"lr_evidence": grid}, {"lr_search": {"chosen": {}, "grid": grid}}):
        t = lr_table(SimpleNamespace(index=index))
        assert list(dict.fromkeys(t.label)) == ["full FT", "LoRA r=8", "LoRA r=64"]  # registry order, then rank
        assert t[t.best].set_index("label").lr.to_dict() == {"full FT": 1e-4, "LoRA r=8": 0.0015, "LoRA r=64": 0.0005}
    assert evidence(SimpleNamespace(index={"lr_search": {"chosen": {"full": 1e-4}}})) is None
    assert lr_table(SimpleNamespace(index={})).empty
