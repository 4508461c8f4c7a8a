"""Typed configuration schemas, registered in Hydra's ConfigStore.

Every YAML under ``conf/`` is validated against these dataclasses, so a misspelt key or a value of
the wrong type fails when the config is composed, before any model is loaded. ``validate`` then
checks the values that a type cannot express (a positive rank, a known method name, ...).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


class ConfigError(ValueError):
    """A value the user set is invalid; the message is one sentence naming it and what is valid."""


@dataclass
class ModelConfig:
    source: str = "minilm"  # minilm | hf | tiny | smollm2 | tiny_llama
    name: Optional[str] = None  # hub id or local directory (source=hf)
    kind: str = "auto"  # auto | encoder | causal
    revision: Optional[str] = None
    trust_remote_code: bool = False
    # tiny / tiny_llama: a randomly initialised BERT / Llama built in-process (tests)
    hidden_size: int = 16
    num_layers: int = 2
    num_heads: int = 2
    intermediate_size: int = 32
    init_seed: int = 0
    num_kv_heads: int = 1  # tiny_llama


@dataclass
class TaskConfig:
    source: str = "rotten_tomatoes"  # rotten_tomatoes | hf | files | bbc_business (kind=lm only)
    name: Optional[str] = None  # hub dataset name (source=hf)
    subset: Optional[str] = None  # hub dataset config, e.g. "sst2"
    text_column: str = "text"
    text_pair_column: Optional[str] = None
    label_column: str = "label"
    train_split: str = "train"
    validation_split: Optional[str] = "validation"
    test_split: Optional[str] = "test"
    train_file: Optional[str] = None  # source=files: CSV or JSONL
    validation_file: Optional[str] = None
    test_file: Optional[str] = None
    split_seed: int = 0  # fixed: the split never depends on the run's seed
    n_validation: int = 500
    n_test: int = 1000
    n_reserve: int = 1000  # rotten_tomatoes: reviews kept out of training for held-out probes
    max_eval_examples: Optional[int] = None
    # causal LMs (kind=lm): prompt -> completion pairs, loss on the completion tokens only
    kind: str = "cls"  # cls (classifier on an encoder) | lm (causal language modelling)
    metric: str = "auto"  # lm: exact_match | perplexity; auto: perplexity for bbc_business, else exact_match
    prompt_column: str = "prompt"  # lm with source=files|hf
    completion_column: str = "completion"
    max_new_tokens: int = 4  # greedy tokens generated for exact match
    chunk_words: int = 48  # bbc_business: words per text chunk


@dataclass
class MethodConfig:
    name: str = "lora"  # none | full | lora | qlora | subspace
    train_head: bool = True  # the classification head is trained in every method
    # lora
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: Any = "attn_qv"  # preset (attn_qv | attn | all_linear) or a list of module names
    use_rslora: bool = False
    use_dora: bool = False
    init: str = "default"  # default | gaussian | pissa | olora | random_b (B != 0, for tests)
    # subspace (intrinsic dimension)
    d: int = 1000
    projection: str = "fastfood"  # dense | sparse | fastfood
    said: bool = False
    exclude_embeddings: bool = False
    head_lr: Optional[float] = None  # learning rate of the directly trained head (null: optim.lr)


@dataclass
class OptimConfig:
    name: str = "adamw"
    lr: float = 5e-4
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    warmup_ratio: float = 0.06
    schedule: str = "linear"  # linear | cosine | constant
    max_grad_norm: float = 1.0


@dataclass
class TrainConfig:
    max_steps: int = 300
    batch_size: int = 16
    grad_accum: int = 1
    max_length: int = 64
    eval_every: int = 100
    eval_batch_size: int = 64
    log_every: int = 10
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | mps
    precision: str = "auto"  # auto | fp32 | bf16
    gradient_checkpointing: bool = False  # causal LMs, methods full / lora / qlora: recompute activations


@dataclass
class HeldoutConfig:
    enabled: bool = True
    tasks: List[str] = field(default_factory=lambda: ["bbc_topic", "subjectivity", "political_party"])
    extra: List[Any] = field(default_factory=list)  # user tasks: task config dicts (source=files|hf) with a name
    drift: bool = True  # linear CKA on held-out unlabelled text (Lee corpus, Wikipedia)
    n_train: int = 100  # probe examples per task
    n_test: int = 100
    n_drift: int = 100
    max_length: int = 64
    C: float = 1.0  # inverse L2 strength of the logistic-regression probe
    seed: int = 0  # fixed: the probe split never depends on the run's seed
    every: int = 0  # also probe every N training steps (0: only at the end)
    # causal LMs: perplexity on held-out text, exact match on a held-out instruction task (lora_study.heldout_lm)
    lm_tasks: List[str] = field(default_factory=lambda: ["lee_wiki", "bbc_tech_politics", "subjectivity"])
    max_new_tokens: int = 4


@dataclass
class LoggerConfig:
    name: str = "none"  # none | wandb
    project: str = "lora-study"
    group: Optional[str] = None
    mode: Optional[str] = None  # wandb mode; offline unless WANDB_MODE is set


@dataclass
class RunConfig:
    save_delta: bool = True
    save_spectrum: bool = True
    save_model: bool = False
    truncation_ranks: List[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64])
    latency: bool = True
    latency_repeats: int = 10
    latency_batches: List[int] = field(default_factory=lambda: [1, 32])  # batch sizes timed (max_length tokens each)
    member: Optional[str] = None  # set by the study sweeper


@dataclass
class StudyConfig:
    name: str = "default"
    root: str = "results/studies"
    methods: List[str] = field(default_factory=lambda: ["none", "full", "lora"])
    ranks: List[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64])
    seeds: List[int] = field(default_factory=lambda: [0])
    alpha_rule: str = "two_r"  # two_r | fixed | rslora
    alpha: float = 16.0  # used by alpha_rule=fixed and rslora
    # found by `lora-study-study experiment=rank_sweep study.lr_search=true study.lr_search_ranks=[1,8,64]` on the
    # default model and task (best validation accuracy over study.lr_grid); see README
    lr: Any = field(default_factory=lambda: {"none": 3e-1, "full": 1e-4, "lora": 1.5e-3, "subspace": 1e-2})
    lr_by_rank: Any = None  # {rank: lr}: overrides lr.lora at that rank, e.g. study.lr_by_rank={1:1e-3}
    lr_search: bool = False
    lr_grid: Any = field(default_factory=lambda: {  # per method, searched on validation with lr_search=true
        "none": [1e-2, 3e-2, 1e-1, 3e-1], "full": [3e-5, 1e-4, 3e-4], "lora": [5e-4, 1.5e-3, 5e-3],
        "subspace": [3e-3, 1e-2, 3e-2]})
    lr_search_ranks: List[int] = field(default_factory=lambda: [1, 8, 64])
    dims: List[int] = field(default_factory=list)  # subspace dimensions d (method subspace)
    said: List[bool] = field(default_factory=lambda: [False])  # subspace variants: DID (false), SAID (true)


@dataclass
class Config:
    model: ModelConfig = MISSING
    task: TaskConfig = MISSING
    method: MethodConfig = MISSING
    optim: OptimConfig = MISSING
    logger: LoggerConfig = MISSING
    heldout: HeldoutConfig = MISSING
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    study: StudyConfig = field(default_factory=StudyConfig)


def register() -> None:
    ConfigStore.instance().store(name="config_schema", node=Config)


METHODS = ("none", "full", "lora", "qlora", "subspace")
LORA_METHODS = ("lora", "qlora")
MODEL_SOURCES = ("minilm", "hf", "tiny", "smollm2", "tiny_llama")
TASK_SOURCES = ("rotten_tomatoes", "hf", "files", "bbc_business")
TASK_KINDS = ("cls", "lm")
LM_METRICS = ("auto", "exact_match", "perplexity")
PROJECTIONS = ("dense", "sparse", "fastfood")
LORA_INITS = ("default", "gaussian", "pissa", "olora", "random_b")


def _one_of(value: Any, valid: tuple, what: str) -> None:
    if value not in valid:
        raise ConfigError(f"{what}={value!r} is not valid; choose one of {', '.join(valid)}.")


def validate(cfg: Any) -> None:
    """Check the values a type cannot express; raise ConfigError with one sentence."""
    _one_of(cfg.model.source, MODEL_SOURCES, "model.source")
    _one_of(cfg.model.kind, ("auto", "encoder", "causal"), "model.kind")
    if cfg.model.source == "hf" and not cfg.model.name:
        raise ConfigError("model=hf needs model.name (a hub id such as roberta-base or a local directory).")
    _one_of(cfg.task.source, TASK_SOURCES, "task.source")
    _one_of(cfg.task.kind, TASK_KINDS, "task.kind")
    _one_of(cfg.task.metric, LM_METRICS, "task.metric")
    if cfg.task.source == "bbc_business" and cfg.task.kind != "lm":
        raise ConfigError("task.source=bbc_business is a language-modelling task; set task.kind=lm (task=lm_bbc_business).")
    for key in ("max_new_tokens", "chunk_words"):
        if int(getattr(cfg.task, key)) <= 0:
            raise ConfigError(f"task.{key}={getattr(cfg.task, key)} is not valid; it must be a positive integer.")
    if cfg.task.source == "files" and not cfg.task.train_file:
        raise ConfigError("task=files needs task.train_file (a CSV or JSONL file with text and label columns).")
    if cfg.task.source == "hf" and not cfg.task.name:
        raise ConfigError("task=hf needs task.name (a hub dataset such as glue, with task.subset=sst2).")
    m = cfg.method
    _one_of(m.name, METHODS, "method.name")
    if m.name in LORA_METHODS:
        if int(m.rank) <= 0:
            raise ConfigError(f"method.rank={m.rank} is not valid; a LoRA rank must be a positive integer.")
        if float(m.alpha) <= 0:
            raise ConfigError(f"method.alpha={m.alpha} is not valid; LoRA's alpha must be positive.")
        if not 0.0 <= float(m.dropout) < 1.0:
            raise ConfigError(f"method.dropout={m.dropout} is not valid; it must lie in [0, 1).")
        _one_of(m.init, LORA_INITS, "method.init")
    if m.name == "subspace":
        if int(m.d) <= 0:
            raise ConfigError(f"method.d={m.d} is not valid; the subspace dimension must be a positive integer.")
        _one_of(m.projection, PROJECTIONS, "method.projection")
        if m.head_lr is not None and float(m.head_lr) <= 0:
            raise ConfigError(f"method.head_lr={m.head_lr} is not valid; the head's learning rate must be positive.")
    o = cfg.optim
    _one_of(o.name, ("adamw",), "optim.name")
    _one_of(o.schedule, ("linear", "cosine", "constant"), "optim.schedule")
    if float(o.lr) <= 0:
        raise ConfigError(f"optim.lr={o.lr} is not valid; the learning rate must be positive.")
    if not 0.0 <= float(o.warmup_ratio) < 1.0:
        raise ConfigError(f"optim.warmup_ratio={o.warmup_ratio} is not valid; it must lie in [0, 1).")
    t = cfg.train
    for key in ("max_steps", "batch_size", "grad_accum", "max_length", "eval_every", "eval_batch_size", "log_every"):
        if int(getattr(t, key)) <= 0:
            raise ConfigError(f"train.{key}={getattr(t, key)} is not valid; it must be a positive integer.")
    _one_of(t.device, ("auto", "cpu", "cuda", "mps"), "train.device")
    _one_of(t.precision, ("auto", "fp32", "bf16"), "train.precision")
    _one_of(cfg.logger.name, ("none", "wandb"), "logger.name")
    h = cfg.heldout
    if h.enabled:
        for key in ("n_train", "n_test", "max_length"):
            if int(getattr(h, key)) <= 0:
                raise ConfigError(f"heldout.{key}={getattr(h, key)} is not valid; it must be a positive integer.")
        if int(h.max_new_tokens) <= 0:
            raise ConfigError(f"heldout.max_new_tokens={h.max_new_tokens} is not valid; it must be a positive integer.")
        if float(h.C) <= 0:
            raise ConfigError(f"heldout.C={h.C} is not valid; the probe's inverse regularisation must be positive.")
    if not cfg.run.latency_batches or any(int(b) <= 0 for b in cfg.run.latency_batches):
        raise ConfigError(f"run.latency_batches={list(cfg.run.latency_batches)} is not valid; give positive batch sizes.")
    if any(int(k) <= 0 for k in cfg.run.truncation_ranks):
        raise ConfigError(f"run.truncation_ranks={list(cfg.run.truncation_ranks)} is not valid; ranks must be positive.")
