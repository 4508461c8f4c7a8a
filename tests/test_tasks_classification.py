"""The classification family's tasks: the default split is fixed, disjoint and stratified; local files load; bad files are refused."""
import json

import pytest

from lora_study.schema import ConfigError
from lora_study.tasks import TaskConfig
from lora_study.tasks.classification import load_task


def test_rotten_tomatoes_split_is_fixed_disjoint_and_stratified():
    a, b = load_task(TaskConfig()), load_task(TaskConfig())
    assert a.test.texts == b.test.texts and a.train.texts[:50] == b.train.texts[:50]
    sets = [set(s.texts) for s in (a.train, a.validation, a.test, a.reserve)]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not sets[i] & sets[j]
    assert (len(a.test), len(a.validation), len(a.reserve)) == (1000, 500, 1000)
    frac = lambda s: sum(s.labels) / len(s)  # noqa: E731
    assert abs(frac(a.test) - frac(a.train)) < 0.01 and abs(frac(a.validation) - frac(a.train)) < 0.01
    assert a.label_names == ["rotten", "fresh"]


def test_split_seed_changes_the_split():
    assert load_task(TaskConfig(split_seed=1)).test.texts != load_task(TaskConfig()).test.texts


def _rows(n):
    return [{"sentence": f"text number {i} {'good' if i % 2 else 'bad'}", "y": "pos" if i % 2 else "neg"} for i in range(n)]


def test_files_task_csv_and_jsonl(tmp_path):
    import pandas as pd
    pd.DataFrame(_rows(200)).to_csv(tmp_path / "train.csv", index=False)
    with open(tmp_path / "test.jsonl", "w") as f:
        for r in _rows(40):
            f.write(json.dumps(r) + "\n")
    cfg = TaskConfig(source="files", train_file=str(tmp_path / "train.csv"), test_file=str(tmp_path / "test.jsonl"),
                     text_column="sentence", label_column="y", n_validation=20)
    t = load_task(cfg)
    assert t.label_names == ["neg", "pos"] and len(t.test) == 40 and len(t.validation) == 20 and len(t.train) == 180
    assert not set(t.train.texts) & set(t.validation.texts)


def test_missing_column_is_named(tmp_path):
    import pandas as pd
    pd.DataFrame(_rows(50)).to_csv(tmp_path / "train.csv", index=False)
    cfg = TaskConfig(source="files", train_file=str(tmp_path / "train.csv"), text_column="text", label_column="y")
    with pytest.raises(ConfigError, match="no column 'text'.*sentence"):
        load_task(cfg)


def test_empty_split_is_refused(tmp_path):
    import pandas as pd
    pd.DataFrame(_rows(100)).to_csv(tmp_path / "train.csv", index=False)
    pd.DataFrame(columns=["sentence", "y"]).to_csv(tmp_path / "test.csv", index=False)
    cfg = TaskConfig(source="files", train_file=str(tmp_path / "train.csv"), test_file=str(tmp_path / "test.csv"),
                     text_column="sentence", label_column="y", n_validation=10)
    with pytest.raises(ConfigError, match="test split is empty"):
        load_task(cfg)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_task(TaskConfig(source="files", train_file=str(tmp_path / "nope.csv")))
