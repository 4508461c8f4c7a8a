"""A study's arms: the groups of members it compares, each a method with settings of its own, swept over the method's
axis. Every method of ``study.methods`` is an arm named after it; ``study.arms`` adds more:

    study.arms.lora_all = {method: lora, title: "LoRA (all linear)", options: {target_modules: all_linear},
                           ranks: [1, 16]}

gives the members ``lora_all_r1_s0`` and ``lora_all_r16_s0``: LoRA with ``method.target_modules=all_linear`` at
r = 1 and 16, α by the study's rule, recorded in the study index with ``arm: lora_all`` and the title, which reports
show ("LoRA (all linear) r=16"). An arm declared without a title is "<method title> (<arm>)", so its labels never
collide with its method's own arm.

- ``options``: fields of the method's schema given to each member, after ``study.method_options`` of the method.
  An option may not contradict what the sweep sets per member (the rank, α, d).
- ``train``: training settings of the arm's members (``max_steps``, ``batch_size``, ``grad_accum``, ``eval_every``,
  ``log_every``), given as ``train.*`` overrides after the study's: arms that differ in batch size or in the number of
  examples seen (``{batch_size: 128, max_steps: 30}``) beside the study's own.
- ``reference``: the arm its members are compared with, seed by seed on the same test examples (default: the
  study's reference, full finetuning as ``study.methods`` names it). Arms that change the training setting compare
  like with like: ``study.arms.full_b128 = {method: full, train: {batch_size: 128, max_steps: 15}}`` and
  ``study.arms.lora_b128 = {method: lora, train: {...the same...}, reference: full_b128}``. Only the method's own arm
  (``full`` in ``study.methods``) has the reference role; a declared arm of a baseline or reference method is a
  treatment that other arms may name as their reference.
- ``ranks`` / ``dims``: the arm's swept values (default: ``study.ranks`` / ``study.dims``); ``alpha_rule`` and
  ``alpha``: LoRA's α per rank for this arm (default: the study's), e.g. ``alpha_rule: rslora`` for one arm only.

The arm's name is the prefix of its member ids and of its learning-rate keys (``study.lr.lora_all``,
``study.lr_by_rank.lora_all``, ``study.lr_grid.lora_all``; each falls back to the method's).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import OmegaConf

from .. import methods
from ..artifacts import ArtifactError, member_id, parse_member_id
from ..methods.base import Variant
from ..methods.lora import ALPHA_RULES
from ..schema import (POSITIVE, POSITIVE_INT, Choice, ConfigError, Each, Pattern, Rule, Values, check_value,
                     rules_of)

ARM_NAME = Pattern(r"[a-z][a-z0-9_]*", "a name of lower-case letters, digits and underscores that starts with a letter")
# the study fields an arm may set for its own members, with their rules
OWN = {"ranks": Each(POSITIVE_INT, nonempty=True), "dims": Each(POSITIVE_INT, nonempty=True),
       "alpha_rule": Choice(ALPHA_RULES), "alpha": POSITIVE}
OWN_AXIS = {"ranks": "rank", "alpha_rule": "rank", "alpha": "rank", "dims": "d"}
ARM_FIELDS = ("method", "title", "options", "train", "reference") + tuple(OWN)
# the training settings an arm may give its own members (not the seed, device or processes, which the study sets)
ARM_TRAIN = ("max_steps", "batch_size", "grad_accum", "eval_every", "log_every")


@dataclass(frozen=True)
class ArmShape(Rule):
    """The shape of one arm in ``study.arms`` (each part's own rule is checked by ``validate_arms``, naming it)."""

    def ok(self, value: Any) -> bool:
        return isinstance(value, dict) and isinstance(value.get("method"), str) and set(value) <= set(ARM_FIELDS) \
            and isinstance(value.get("train") or {}, dict)

    def what(self) -> str:
        return "an arm: a mapping with method and optionally " + ", ".join(ARM_FIELDS[1:])


ARMS = Values(ArmShape(), key=ARM_NAME)


@dataclass(frozen=True)
class ByRank(Rule):
    """Learning rates by rank: {rank: lr} for every rank-swept arm without its own, {arm: {rank: lr}} for one arm."""

    def ok(self, value: Any) -> bool:
        own = Values(POSITIVE, key=POSITIVE_INT)
        return isinstance(value, dict) and all((POSITIVE_INT.ok(k) and POSITIVE.ok(v)) or (ARM_NAME.ok(k) and own.ok(v))
                                               for k, v in value.items())

    def what(self) -> str:
        return "a mapping from ranks to positive rates, or from arm names to such mappings"


def plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def override(value: Any) -> str:
    """A value as Hydra's override grammar writes it."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(override(v) for v in value) + "]"
    return "null" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


@dataclass
class Arm:
    name: str
    method: str
    declared_title: Optional[str] = None
    options: Dict[str, Any] = field(default_factory=dict)  # method_options of the method, then the arm's own
    own: Dict[str, Any] = field(default_factory=dict)  # ranks, dims, alpha_rule, alpha replacing the study's
    declared: bool = False  # in study.arms (else a method of study.methods)
    declared_options: Dict[str, Any] = field(default_factory=dict)
    train: Dict[str, Any] = field(default_factory=dict)  # train.* settings of the arm's members
    reference: Optional[str] = None  # the arm its members are compared with (None: the study's reference)

    @property
    def spec(self) -> methods.Method:
        return methods.get(self.method)

    @property
    def title(self) -> Optional[str]:
        """How reports name the arm; None for an arm named after its method (the method's own title)."""
        if self.declared_title:
            return str(self.declared_title)
        return f"{self.spec.title} ({self.name})" if self.name != self.method else None

    @property
    def where(self) -> str:
        """Where the arm is configured, for messages."""
        return f"study.arms.{self.name}" if self.declared else "study.methods"

    def overrides(self) -> List[str]:
        """The options and the arm's training settings as overrides of each member."""
        return [f"method.{k}={override(v)}" for k, v in self.options.items()] + \
            [f"train.{k}={override(v)}" for k, v in self.train.items()]


def study_arms(study) -> List[Arm]:
    """The study's arms in order: one per method of ``study.methods``, then those of ``study.arms``."""
    method_opts = plain(study.method_options) or {}
    arms = [Arm(name, name, options=dict(method_opts.get(name) or {})) for name in study.methods]
    for name, spec in (plain(getattr(study, "arms", None)) or {}).items():
        spec = spec or {}
        method = spec.get("method")
        mine = dict(spec.get("options") or {})
        arms.append(Arm(name, method, spec.get("title"), {**(method_opts.get(method) or {}), **mine},
                        {k: spec[k] for k in OWN if spec.get(k) is not None}, True, mine,
                        dict(spec.get("train") or {}), spec.get("reference")))
    return arms


def find_arm(study, name: str) -> Arm:
    """The arm called ``name``; a method's own arm when the study has no arm of that name."""
    return next((a for a in study_arms(study) if a.name == name), None) or Arm(name, name)


def arm_view(study, arm: Arm):
    """The study as the arm's method sees it: the arm's own ranks, dims, alpha_rule and alpha in place of the study's,
    and ``lr_search_ranks: all`` as the arm's ranks."""
    view = dict(plain(study))
    view.update(arm.own)
    if view.get("lr_search_ranks") == "all":
        view["lr_search_ranks"] = view["ranks"]
    return OmegaConf.create(view)


def arm_variants(study, arm: Arm, search: bool = False) -> List[Variant]:
    """The arm's members per seed (``search``: those its learning-rate search trains), named after the arm."""
    view = arm_view(study, arm)
    found = arm.spec.search_variants(view) if search else arm.spec.variants(view)
    if arm.name == arm.method:
        return found
    return [dataclasses.replace(v, arm=_renamed(v.arm, arm)) for v in found]


def _renamed(variant_arm: str, arm: Arm) -> str:
    """A method's variant prefix (``lora``, ``subspace_did``) with the method's name replaced by the arm's."""
    if variant_arm == arm.method or variant_arm.startswith(arm.method + "_"):
        return arm.name + variant_arm[len(arm.method):]
    return f"{arm.name}_{variant_arm}"


def validate_arms(study) -> None:
    """Each arm's method, options and own values, and that every arm names its members apart; ConfigError naming the
    field at the first problem."""
    arms = study_arms(study)
    if not arms:
        raise ConfigError("study.methods is empty and study.arms names no arm; give at least one method or arm.")
    seen: Dict[str, Arm] = {}
    for arm in arms:
        if arm.name in seen:
            raise ConfigError(f"study.methods lists {arm.name} twice; list each method once." if not arm.declared else
                              f"study.arms.{arm.name} has the name of the arm of method {arm.name} in study.methods; "
                              f"rename it or drop {arm.name} from study.methods.")
        seen[arm.name] = arm
        if arm.declared:
            _check_declared(arm)
    for arm in arms:
        if arm.reference is not None:
            _check_reference(arm, seen)
    owners: Dict[str, str] = {}
    for arm in arms:
        for v in arm_variants(study, arm):
            _check_options_against(arm, v)
            mid = member_id(v.arm, 0, arm.spec.axis, v.value)
            try:
                back = parse_member_id(mid)
            except ArtifactError:
                back = {}
            if back.get("arm") != v.arm or back.get("value") != v.value:
                raise ConfigError(f"{arm.where} cannot name its members: {mid} would not read back as arm {v.arm}; "
                                  f"choose an arm name without a part like _r8 or _s1.")
            if owners.get(mid, arm.name) != arm.name:
                raise ConfigError(f"the arms {owners[mid]} and {arm.name} both name a member {mid}; "
                                  "rename one of them.")
            owners[mid] = arm.name


def _check_declared(arm: Arm) -> None:
    path = f"study.arms.{arm.name}"
    check_value(f"{path}.method", arm.method, Choice(methods.names))
    spec = arm.spec
    for key, rule in OWN.items():
        check_value(f"{path}.{key}", arm.own.get(key), rule)
        if key in arm.own and spec.axis != OWN_AXIS[key]:
            raise ConfigError(f"{path}.{key} is set, but method {spec.name} is not swept over "
                              f"{'the rank' if OWN_AXIS[key] == 'rank' else 'd'}; remove it.")
    check_options(f"{path}.options", spec, arm.declared_options)
    check_train(f"{path}.train", arm.train)


def _check_reference(arm: Arm, arms: Dict[str, Arm]) -> None:
    """An arm's reference names another arm of the study, one not swept over an axis (full finetuning in some
    setting)."""
    path = f"study.arms.{arm.name}.reference"
    other = arms.get(arm.reference) if isinstance(arm.reference, str) else None
    if other is None or other.name == arm.name:
        names = ", ".join(a for a in arms if a != arm.name)
        raise ConfigError(f"{path}={arm.reference!r} is not valid; it must name another arm of the study ({names}).")
    if other.spec.axis is not None or other.spec.is_baseline:
        raise ConfigError(f"{path}={arm.reference} names an arm of method {other.method}, which is "
                          f"{'the baseline' if other.spec.is_baseline else 'swept over ' + other.spec.axis}; name an "
                          "arm of full finetuning (method full).")


def check_train(path: str, train: Dict[str, Any]) -> None:
    """Every training setting of an arm is one an arm may set and satisfies its rule in ``train``'s schema."""
    from ..config import TrainConfig
    rules = rules_of(TrainConfig)
    for key, value in (train or {}).items():
        if key not in ARM_TRAIN:
            raise ConfigError(f"{path}.{key} is not a training setting an arm may set; choose among "
                              f"{', '.join(ARM_TRAIN)}.")
        check_value(f"{path}.{key}", value, rules[key])


def check_options(path: str, spec: methods.Method, options: Dict[str, Any]) -> None:
    """Every option is a field of the method's schema (not its name) and satisfies that field's rule."""
    rules = rules_of(spec.schema)
    fields = sorted(set(rules) - {"name"})
    for key, value in (options or {}).items():
        if key not in fields:
            raise ConfigError(f"{path}.{key} is not a field of method {spec.name}; it has {', '.join(fields)}.")
        check_value(f"{path}.{key}", value, rules[key])


def _check_options_against(arm: Arm, variant: Variant) -> None:
    """An option may not contradict what the sweep sets for each member (rank, α, use_rslora, d, said)."""
    swept = dict(o.split("=", 1) for o in variant.overrides if o.startswith("method."))
    for key, value in arm.options.items():
        set_by_sweep = swept.get(f"method.{key}")
        if set_by_sweep is not None and set_by_sweep != override(value):
            where = f"study.arms.{arm.name}.options.{key}" if key in arm.declared_options else \
                f"study.method_options.{arm.method}.{key}"
            raise ConfigError(f"{where}={override(value)} contradicts method.{key}={set_by_sweep}, which the study "
                              f"sets for each member of {arm.name}; remove it and set the arm's ranks, dims, "
                              f"alpha_rule or alpha instead.")
