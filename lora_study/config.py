"""Typed configuration schemas, registered in Hydra's ConfigStore, and their validation.

Every YAML under ``conf/`` is validated against these dataclasses, so a misspelt key or a value of the wrong
type fails when the config is composed, before any model is loaded. Each part of the suite owns its section's
schema (``models.ModelConfig``, ``tasks.TaskConfig``, ``heldout.HeldoutConfig``, one schema per method in
``lora_study.methods``); this module composes them. Every field declares its rule (``lora_study.schema``), and
``validate`` enforces them all, then the checks that relate fields, each failing with one sentence.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from . import methods as method_registry, tasks
from .artifacts import SCOPES
from .heldout import HeldoutConfig
from .methods.lora import ALPHA_RULES, Targets
from .models import ModelConfig, validate_model
from .run import distributed
from .study.arms import ARMS, ByRank
from .schema import (FRACTION, Rule, NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, AllOr, Choice, ConfigError, Each, Free, Maybe,
                     Num, Values, check_section, opt)  # noqa: F401 - ConfigError is part of this module's interface
from .tasks import TaskConfig

__all__ = ["Config", "ConfigError", "conf_dir", "register", "validate"]

CONF_PACKAGE = "lora_study.conf"  # the repository's top-level conf/, as pyproject.toml installs it


def conf_dir() -> Path:
    """The directory of the Hydra config groups, located through the import system: inside the installed package
    (a wheel) or the repository's conf/ (an editable install), whatever the working directory."""
    spec = importlib.util.find_spec(CONF_PACKAGE)
    if spec is None or spec.origin is None:
        raise ConfigError(f"the config groups ({CONF_PACKAGE}) are missing from this installation of lora-study; "
                          f"reinstall it (pip install .).")
    return Path(spec.origin).resolve().parent


@dataclass(frozen=True)
class FirstSeed(Rule):
    """An override of a ``run.`` or ``heldout.`` field: what is measured after training, never what trains."""

    def ok(self, value: Any) -> bool:
        return isinstance(value, str) and "=" in value and value.split("=", 1)[0].startswith(("run.", "heldout."))

    def what(self) -> str:
        return "an override of a run.* or heldout.* field such as run.latency=true"


@dataclass
class OptimConfig:
    name: str = opt("adamw", Choice(("adamw",)))
    lr: float = opt(5e-4, POSITIVE)
    weight_decay: float = opt(0.0, Num(ge=0))
    beta1: float = opt(0.9, FRACTION)
    beta2: float = opt(0.999, FRACTION)
    eps: float = opt(1e-8, POSITIVE)
    warmup_ratio: float = opt(0.06, FRACTION)
    schedule: str = opt("linear", Choice(("linear", "cosine", "constant")))
    max_grad_norm: float = opt(1.0, Num(ge=0))  # 0: no clipping


@dataclass
class TrainConfig:
    max_steps: int = opt(300, POSITIVE_INT)
    batch_size: int = opt(16, POSITIVE_INT)
    grad_accum: int = opt(1, POSITIVE_INT)
    max_length: int = opt(64, POSITIVE_INT)
    eval_every: int = opt(100, POSITIVE_INT)
    eval_batch_size: int = opt(64, POSITIVE_INT)
    log_every: int = opt(10, POSITIVE_INT)
    seed: int = opt(0, NON_NEGATIVE_INT)
    device: str = opt("auto", Choice(("auto", "cpu", "cuda", "mps")))  # auto: cuda > mps > cpu
    precision: str = opt("auto", Choice(("auto", "fp32", "bf16")))  # auto: bf16 autocast on CUDA, else fp32
    gradient_checkpointing: bool = opt(False, Free())  # recompute activations (full, lora, qlora)
    # processes under torchrun, one device each (lora_study.run.distributed); batch_size is per process, so the
    # global batch is batch_size x grad_accum x processes
    processes: int = opt(1, POSITIVE_INT)
    # torch's intra-op threads for the run (null: torch's default); set before anything computes. A study whose
    # launcher runs members side by side (joblib's n_jobs > 1) gives each member its share of the cores
    threads: Optional[int] = opt(None, POSITIVE_INT)


@dataclass
class LoggerConfig:
    name: str = opt("none", Choice(("none", "wandb")))
    project: str = opt("lora-study", Free())
    group: Optional[str] = opt(None, Free())
    mode: Optional[str] = opt(None, Choice(("online", "offline", "disabled")))  # default: WANDB_MODE, else offline


@dataclass
class RunConfig:
    save_delta: bool = opt(True, Free())
    save_spectrum: bool = opt(True, Free())
    save_model: bool = opt(False, Free())
    # false: the test split is not evaluated (the learning-rate search's runs, scored on validation alone)
    evaluate_test: bool = opt(True, Free())
    # full finetuning: the test metric with ΔW truncated to rank k (and k = 0) in each scope (post_training.SCOPES)
    truncation_ranks: List[int] = opt(rule=Each(POSITIVE_INT), factory=lambda: [1, 2, 4, 8, 16, 32, 64])
    truncation_scopes: List[str] = opt(rule=Each(Choice(tuple(SCOPES))), factory=lambda: list(SCOPES))
    # truncation's many test passes read the test split's first examples only (null: all of them)
    truncation_max_examples: Optional[int] = opt(None, POSITIVE_INT)
    # the matrices the like-for-like interventions act on for methods without targets of their own (full FT):
    # the LoRA arm's targets (a preset or module names), for truncation's targets_only scope and intruder scaling
    intervention_targets: Any = opt("attn_qv", Targets())
    # Shuttleworth et al.'s test: scale intruder dimensions (top-k singular vectors of W_ft with max |cos| < ε to
    # W_pre's) by λ and measure the target metric and forgetting again
    intruder_scaling: bool = opt(False, Free())
    intruder_lambda: float = opt(0.3, Num(ge=0, le=1))
    intruder_eps: float = opt(0.5, Num(gt=0, le=1))
    intruder_k: int = opt(10, POSITIVE_INT)
    latency: bool = opt(True, Free())
    latency_repeats: int = opt(10, POSITIVE_INT)
    latency_batches: List[int] = opt(rule=Each(POSITIVE_INT, nonempty=True), factory=lambda: [1, 32])
    member: Optional[str] = opt(None, Free())  # set by the study sweeper
    # the study arm the run belongs to, its title and place among the arms (set by the study sweeper; a run outside
    # a study is its method's own arm): written into summary.json's placement
    arm: Optional[str] = opt(None, Free())
    arm_title: Optional[str] = opt(None, Free())
    arm_order: int = opt(0, NON_NEGATIVE_INT)


@dataclass
class StudyConfig:
    name: str = opt("default", Free())
    root: str = opt("results/studies", Free())
    # one arm per method, named after it; study.arms adds arms of their own (lora_study.study.arms)
    methods: List[str] = opt(rule=Each(Choice(method_registry.names)), factory=lambda: ["none", "full", "lora"])
    # {arm: {method, title, options, ranks | dims, alpha_rule, alpha}}, e.g. an all-linear LoRA arm:
    # {lora_all: {method: lora, title: "LoRA (all linear)", options: {target_modules: all_linear}}}
    arms: Any = opt(None, ARMS)
    ranks: List[int] = opt(rule=Each(POSITIVE_INT, nonempty=True), factory=lambda: [1, 2, 4, 8, 16, 32, 64])
    seeds: List[int] = opt(rule=Each(NON_NEGATIVE_INT, nonempty=True), factory=lambda: [0])
    # equivalence margins, one per unit: accuracy-type scores (test accuracy, exact match, held-out probe accuracy)
    # in accuracy points; perplexity as a relative change (log(1 + m) nats per token); KL to the base in nats per token
    margin: float = opt(0.01, Num(gt=0, lt=1))
    margin_perplexity: float = opt(0.01, Num(gt=0, lt=1))
    margin_kl: float = opt(0.01, Num(gt=0, lt=1))
    # seeds until resolved: after the study's seeds, add seeds_per_round seeds at a time to the rank-swept members
    # whose comparison with full FT is still unresolved (and to full FT), up to max_seeds, the error rates held across
    # the looks by alpha spending (analysis.sequential)
    until_resolved: bool = opt(False, Free())
    max_seeds: int = opt(10, POSITIVE_INT)
    seeds_per_round: int = opt(2, POSITIVE_INT)
    alpha_rule: str = opt("two_r", Choice(ALPHA_RULES))  # two_r | fixed | rslora
    alpha: float = opt(16.0, POSITIVE)  # used by alpha_rule=fixed and rslora
    # per arm or method (an arm without its own takes its method's). Found by `lora-study-study
    # experiment=rank_sweep study.lr_search=true study.lr_search_ranks=[1,8,64]` on the default model and task
    # (best validation accuracy over study.lr_grid); see README
    lr: Any = opt(rule=Values(POSITIVE),
                  factory=lambda: {"none": 3e-1, "full": 1e-4, "lora": 1.5e-3, "subspace": 1e-2})
    # rank-swept arms: {rank: lr} for every arm without its own, {arm: {rank: lr}} for one arm
    lr_by_rank: Any = opt(None, ByRank())
    # overrides for the first seed's members only: measurements one seed suffices for (latency, the merge check,
    # intruder scaling), e.g. ["run.latency=true"]; they must not change what training computes
    first_seed_overrides: List[str] = opt(rule=Each(FirstSeed()), factory=list)
    lr_search: bool = opt(False, Free())
    # the seeds every searched rate runs at (the study's first ones); a rate any of them does not learn at is out
    lr_search_seeds: int = opt(2, POSITIVE_INT)
    lr_grid: Any = opt(rule=Values(Each(POSITIVE)), factory=lambda: {  # per arm or method, searched with lr_search=true
        "none": [1e-2, 3e-2, 1e-1, 3e-1], "full": [3e-5, 1e-4, 3e-4], "lora": [5e-4, 1.5e-3, 5e-3],
        "subspace": [3e-3, 1e-2, 3e-2]})
    # the ranks a rank-swept arm's search trains at (other ranks take the nearest searched rank); all: every rank
    lr_search_ranks: Any = opt(rule=AllOr(Each(POSITIVE_INT, nonempty=True)), factory=lambda: [1, 8, 64])
    # the dimensions d a subspace arm's search trains at (DID), each d of its sweep taking the rate searched at the
    # nearest of them on a log scale; empty: one search at the configured method.d
    lr_search_dims: List[int] = opt(rule=Each(POSITIVE_INT), factory=list)
    # while a key's best rate is the smallest or largest tried, the search adds the next rate beyond it, one step of
    # the grid's spacing there (this factor for a grid of one rate), at most lr_search_max_extensions per key
    lr_extend_factor: float = opt(3.0, Num(gt=1))
    lr_search_max_extensions: int = opt(3, NON_NEGATIVE_INT)
    # the validation grid that chose the shipped rates, {key: {lr: validation score}} as study.json's lr_search.grid
    # writes it; copied into study.json (lr_evidence) for the report. A row set to null is dropped: how a preset
    # removes a row it inherits (a rank it does not train)
    lr_evidence: Any = opt(None, Values(Maybe(Values(Maybe(Num()), key=POSITIVE))))
    # per method, settings of its schema given to each of its members, e.g. {subspace: {head_lr: 0.3}}
    method_options: Any = opt(None, Values(Free(), key=Choice(method_registry.names)))
    dims: List[int] = opt(rule=Each(POSITIVE_INT), factory=list)  # subspace dimensions d (method subspace)
    said: List[bool] = opt(rule=Each(Free(), nonempty=True), factory=lambda: [False])  # DID (false), SAID (true)


@dataclass
class Config:
    model: ModelConfig = MISSING
    task: TaskConfig = MISSING
    method: Any = MISSING  # one of the registered methods' schemas
    optim: OptimConfig = MISSING
    logger: LoggerConfig = MISSING
    heldout: HeldoutConfig = MISSING
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    study: StudyConfig = field(default_factory=StudyConfig)


SECTIONS = {"model": ModelConfig, "task": TaskConfig, "optim": OptimConfig, "logger": LoggerConfig,
            "heldout": HeldoutConfig, "train": TrainConfig, "run": RunConfig, "study": StudyConfig}


def register() -> None:
    ConfigStore.instance().store(name="config_schema", node=Config)


def validate(cfg: Any) -> None:
    """Every field's rule, then the checks that relate fields; ConfigError with one sentence at the first problem."""
    for section, schema in SECTIONS.items():
        check_section(cfg[section], schema, section)
    method = method_registry.get(cfg.method.name)
    check_section(cfg.method, method.schema, "method")
    method.validate(cfg)
    if not cfg.run.evaluate_test:
        on_test = [k for k, on in (("run.truncation_ranks", method.truncates and bool(cfg.run.truncation_ranks)),
                                   ("run.intruder_scaling", bool(cfg.run.intruder_scaling))) if on]
        if on_test:
            raise ConfigError(f"run.evaluate_test=false leaves no test split for {' and '.join(on_test)} to be "
                              f"measured on; turn {'them' if len(on_test) > 1 else 'it'} off or evaluate the test "
                              "split.")
    validate_model(cfg.model)
    tasks.get(cfg.task.family).validate(cfg.task)
    distributed.check(cfg)
