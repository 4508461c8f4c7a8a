"""The contract between runs and analyses (lora_study/artifacts.py): a study directory describes itself, so the
analysis of a study imports nothing of the training side (no method registry, no run code, no peft or
transformers), and a study written by the previous schema still loads and gives the tables it gave then."""
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import ROOT, compose
from lora_study.artifacts import (PLACEMENT, SCHEMA_VERSION, ArtifactError, StudyDir, label_of, migrate_member,
                                  placement)

FIXTURE = ROOT / "tests" / "fixtures" / "study_v1"
TABLES = ROOT / "tests" / "fixtures" / "study_v1_tables"
TRAINING_SIDE = ("lora_study.methods", "lora_study.run.runner", "lora_study.run.train", "lora_study.models", "peft",
                 "transformers")


@pytest.fixture(scope="module")
def v1_study(tmp_path_factory) -> Path:
    """The schema 1 fixture with the session's tiny model (the same seeded weights) as its base model."""
    from lora_study.models.tiny import tiny_bert_path
    base = tiny_bert_path(compose(["model=tiny"]).model)
    dst = tmp_path_factory.mktemp("v1") / "v1"
    shutil.copytree(FIXTURE, dst)
    for f in dst.rglob("*"):
        if f.is_file() and f.suffix in (".json", ".yaml"):
            f.write_text(f.read_text().replace("BASE_MODEL_DIR", str(base)).replace("STUDY_ROOT", str(dst.parent)))
    return dst


def test_a_schema_1_study_is_migrated_on_read(v1_study):
    idx = StudyDir(v1_study).index()
    assert idx["schema_version"] == SCHEMA_VERSION and idx["migrated_from"] == 1
    by_id = {m["id"]: m for m in idx["members"]}
    assert {k: by_id["lora_r4_s1"][k] for k in PLACEMENT} == {
        "family": "lora", "method": "lora", "arm": "lora", "title": "LoRA", "label": "LoRA r=4", "axis": "rank",
        "value": 4, "role": "treatment", "variant": None, "order": 2}
    assert (by_id["none_s0"]["role"], by_id["full_s1"]["role"]) == ("baseline", "reference")
    assert json.loads((v1_study / "study.json").read_text())["schema_version"] == 1  # the file itself is untouched


def test_migration_places_any_method_without_the_registry():
    sub = migrate_member({"id": "subspace_said_d100_s0", "method": "subspace", "d": 100, "said": True, "seed": 0})
    assert (sub["family"], sub["variant"], sub["label"], sub["axis"], sub["value"]) == \
        ("subspace", "SAID", "subspace SAID d=100", "d", 100)
    own = migrate_member({"id": "lora_fa_r8_s0", "method": "lora_fa", "rank": 8, "arm": "lora_fa", "seed": 0})
    assert (own["family"], own["role"], own["axis"], own["label"]) == ("lora_fa", "treatment", "rank", "lora_fa r=8")
    arm = migrate_member({"method": "lora", "rank": 16, "arm": "lora_all", "title": "LoRA (all linear)"})
    assert arm["label"] == "LoRA (all linear) r=16" == label_of("LoRA (all linear)", "rank", 16)
    with pytest.raises(ArtifactError, match="lacks its placement"):
        placement({"id": "x_s0", "method": "lora"})


def test_the_migrated_study_gives_the_tables_it_gave_before(v1_study):
    from lora_study.analysis.loader import load_study
    from lora_study.analysis.measures import Context
    ctx = Context(load_study(v1_study))
    for name in ("runs", "spectra", "similarity", "intruders", "amplification", "forgetting"):
        before, table = pd.read_csv(TABLES / f"{name}.csv"), ctx.table(name)
        assert set(before.columns) <= set(table.columns), name
        now = pd.read_csv(io.StringIO(table.to_csv(index=False)))  # as the analysis writes it
        if name == "similarity":  # the random control is averaged over draws now, the measured rows are as before
            before, now = before[before.compares != "random"], now[now.compares != "random"]
        pd.testing.assert_frame_equal(before.reset_index(drop=True),
                                      now[list(before.columns)].reset_index(drop=True), check_dtype=False)


def test_the_analysis_imports_nothing_of_the_training_side(v1_study, tmp_path):
    """In a fresh interpreter: import the analysis, analyse the study and write its report; the method registry,
    the run code, the model loaders, peft and transformers are never imported, and of lora_study outside its analysis
    only the contract and the linear algebra are."""
    out = tmp_path / "report"
    code = (
        "import json, sys\n"
        "from lora_study.analysis.loader import load_study\n"
        "from lora_study.analysis.measures import Context\n"
        "from pathlib import Path\n"
        "from lora_study.analysis.report import report\n"
        f"report(load_study({str(v1_study)!r}), Path({str(out)!r}))\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('lora_study', 'peft', 'transformers')))))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env={**os.environ})
    assert r.returncode == 0, r.stderr[-3000:]
    loaded = json.loads(r.stdout.strip().splitlines()[-1])
    assert not [m for m in loaded if m.startswith(TRAINING_SIDE)], loaded
    outside = {m for m in loaded if m != "lora_study.analysis" and not m.startswith("lora_study.analysis.")}
    assert outside <= {"lora_study", "lora_study.artifacts", "lora_study.linalg"}
    assert (out / "report.md").exists()
