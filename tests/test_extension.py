"""Extension points: a new method is one registry entry. A toy method swept over LoRA's rank axis, defined here
and nowhere else, flows through a whole study: the plan, the runs, the tradeoff table, the spectra and the
forgetting outputs, with no other file edited."""
from dataclasses import dataclass

import pandas as pd
import pytest

from conftest import STUDY_ARGS, study_in_process
from lora_study import methods
from lora_study.methods.lora import Lora, LoraConfig, lora_layers


@dataclass
class FrozenAConfig(LoraConfig):
    pass


class FrozenA(Lora):
    """LoRA with A frozen at its random initialisation and only B trained (LoRA-FA, Zhang et al. 2023)."""
    name = "frozena"
    title = "LoRA-FA"
    schema = FrozenAConfig

    def prepare(self, model, cfg, head, gradient_checkpointing=False):
        prepared = super().prepare(model, cfg, head, gradient_checkpointing)
        for layer in lora_layers(prepared.model).values():
            for a in layer.lora_A.values():
                a.weight.requires_grad_(False)
        return prepared


@pytest.fixture()
def toy_method():
    methods.register(FrozenA())  # its config group option comes with it: no YAML, nothing stored by hand
    yield "frozena"
    methods.unregister("frozena")


def test_a_toy_method_flows_through_the_whole_pipeline(tmp_path, toy_method):
    from lora_study.analysis import load_study
    from lora_study.analysis.analyze import analyze
    code = study_in_process(*STUDY_ARGS, "study.methods=[none,full,frozena]", "study.ranks=[1,2]",
                            "study.lr_by_rank={1:0.005,2:0.005}", f"study.root={tmp_path}", "study.name=toy")
    assert code == 0
    import json
    index = json.loads((tmp_path / "toy" / "study.json").read_text())
    planned = {m["id"]: m for m in index["members"]}
    assert set(planned) == {"none_s0", "full_s0", "frozena_r1_s0", "frozena_r2_s0"}
    assert planned["frozena_r2_s0"]["rank"] == 2 and planned["frozena_r2_s0"]["alpha"] == 4.0
    assert all(m["status"] == "complete" for m in index["members"])

    study = load_study(tmp_path / "toy")
    ctx = analyze(study, tmp_path / "toy" / "analysis")
    runs = ctx.table("runs")
    toy = runs[runs.method == "frozena"]
    assert list(toy.label) == ["LoRA-FA r=1", "LoRA-FA r=2"]
    # only B trains: r·d_out per target plus the head, fewer than LoRA's r·(d_in + d_out)
    summary = study.run("frozena_r2_s0").summary
    assert summary["params"]["trainable"] == 2 * 16 * len(summary["lora_targets"]) + summary["params"]["head"]
    spectra = ctx.table("spectra")
    toy_spectra = spectra[spectra.member.str.startswith("frozena")]
    assert len(toy_spectra) == 2 * len(summary["lora_targets"]) and (toy_spectra.rank90 <= toy_spectra["rank"]).all()
    assert {"LoRA-FA r=1", "LoRA-FA r=2"} <= set(pd.read_csv(tmp_path / "toy" / "analysis" / "tradeoff.csv").label)
    forgetting = ctx.table("forgetting")
    assert {"frozena_r1_s0", "frozena_r2_s0"} <= set(forgetting.member)
