"""Validation declared once per field: every field of a typed config schema carries a rule (a range, a set of
choices, a rule for each item of a list or value of a mapping, or ``Free`` for names and paths), and
``check_section`` enforces them before any work starts, raising one sentence that names the field:

    method.rank=0 is not valid; it must be a positive integer.

Types are Hydra's job (a string where an int belongs fails when the config is composed); rules cover what a
type cannot say. Checks that relate two fields, or need the model (a rank above the adapted dimension), live
with the part that owns them and raise the same ``ConfigError``.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Sequence, Union

RULE = "rule"


class ConfigError(ValueError):
    """A value the user set is invalid; the message is one sentence naming it and what is valid."""


class Rule:
    """A constraint on one config value: ``ok`` says whether a value satisfies it, ``what`` names what it must be."""

    def ok(self, value: Any) -> bool:
        raise NotImplementedError

    def what(self) -> str:
        raise NotImplementedError

    def clause(self) -> str:
        """The end of the error sentence, after 'is not valid; '."""
        return f"it must be {self.what()}"


@dataclass(frozen=True)
class Free(Rule):
    """Any value of the field's type (names, paths, switches)."""

    def ok(self, value: Any) -> bool:
        return True

    def what(self) -> str:
        return "any value"


@dataclass(frozen=True)
class Num(Rule):
    """A number within bounds: ``gt``/``ge`` below, ``lt``/``le`` above; ``integer`` for whole numbers."""
    gt: Optional[float] = None
    ge: Optional[float] = None
    lt: Optional[float] = None
    le: Optional[float] = None
    integer: bool = False

    def what(self) -> str:
        unbounded_above = self.lt is None and self.le is None
        if self.integer and self.ge == 1 and unbounded_above and self.gt is None:
            return "a positive integer"
        if self.integer and self.ge == 0 and unbounded_above and self.gt is None:
            return "a non-negative integer"
        if self.gt == 0 and unbounded_above and self.ge is None:
            return "positive"
        lo = f"[{self.ge:g}" if self.ge is not None else f"({self.gt:g}" if self.gt is not None else "(-inf"
        hi = f"{self.le:g}]" if self.le is not None else f"{self.lt:g})" if self.lt is not None else "inf)"
        return f"{'an integer' if self.integer else 'a number'} in {lo}, {hi}"

    def ok(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(float(value)):
            return False
        v = float(value)
        return not ((self.integer and v != int(v)) or (self.gt is not None and not v > self.gt) or
                    (self.ge is not None and not v >= self.ge) or (self.lt is not None and not v < self.lt) or
                    (self.le is not None and not v <= self.le))


POSITIVE_INT = Num(ge=1, integer=True)
NON_NEGATIVE_INT = Num(ge=0, integer=True)
POSITIVE = Num(gt=0)
FRACTION = Num(ge=0, lt=1)


@dataclass(frozen=True)
class Choice(Rule):
    """One of a fixed set of values, or of a registry's names (``values`` may be a callable returning them)."""
    values: Union[Sequence[Any], Callable[[], Iterable[Any]]]

    def options(self) -> list:
        return list(self.values() if callable(self.values) else self.values)

    def ok(self, value: Any) -> bool:
        return value in self.options()

    def what(self) -> str:
        return "one of " + ", ".join(str(o) for o in self.options())

    def clause(self) -> str:
        return "choose " + self.what()


@dataclass(frozen=True)
class Each(Rule):
    """A list whose every item satisfies ``item``; ``nonempty`` refuses an empty list."""
    item: Rule
    nonempty: bool = False

    def ok(self, value: Any) -> bool:
        return isinstance(value, (list, tuple)) and (bool(value) or not self.nonempty) and \
            all(self.item.ok(v) for v in value)

    def what(self) -> str:
        return f"a {'non-empty ' if self.nonempty else ''}list whose every value is {self.item.what()}"


@dataclass(frozen=True)
class Values(Rule):
    """A mapping whose every value satisfies ``value`` (and every key ``key``, when given)."""
    value: Rule
    key: Optional[Rule] = None

    def ok(self, mapping: Any) -> bool:
        return isinstance(mapping, dict) and all(
            self.value.ok(v) and (self.key is None or self.key.ok(k)) for k, v in mapping.items())

    def what(self) -> str:
        keys = f" keyed by {self.key.what()}" if self.key is not None else ""
        return f"a mapping{keys} whose every value is {self.value.what()}"


@dataclass(frozen=True)
class Pattern(Rule):
    """A string matching the regular expression ``regex`` in full; ``description`` says in words what it must be."""
    regex: str
    description: str

    def ok(self, value: Any) -> bool:
        return isinstance(value, str) and re.fullmatch(self.regex, value) is not None

    def what(self) -> str:
        return self.description


@dataclass(frozen=True)
class AllOr(Rule):
    """The word ``all`` or a value satisfying ``rule`` (what ``all`` means is the field's to say)."""
    rule: Rule

    def ok(self, value: Any) -> bool:
        return value == "all" or self.rule.ok(value)

    def what(self) -> str:
        return f"all or {self.rule.what()}"


@dataclass(frozen=True)
class Maybe(Rule):
    """null, or a value satisfying ``rule`` (for items of lists and mappings; a field's own null is always allowed)."""
    rule: Rule

    def ok(self, value: Any) -> bool:
        return value is None or self.rule.ok(value)

    def what(self) -> str:
        return f"null or {self.rule.what()}"


def opt(default: Any = dataclasses.MISSING, rule: Rule = Free(), *, factory: Optional[Callable[[], Any]] = None):
    """A dataclass field with its validation rule attached (``factory`` for list and dict defaults)."""
    if factory is not None:
        return field(default_factory=factory, metadata={RULE: rule})
    return field(default=default, metadata={RULE: rule})


def _plain(value: Any) -> Any:
    from omegaconf import OmegaConf
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _shown(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def check_value(path: str, value: Any, rule: Rule) -> None:
    """Raise ConfigError naming ``path`` when ``value`` (not None) breaks ``rule``."""
    value = _plain(value)
    if value is not None and not rule.ok(value):
        raise ConfigError(f"{path}={_shown(value)} is not valid; {rule.clause()}.")


def rules_of(schema: type) -> dict:
    """{field name: rule} of a schema dataclass (every field has one; ``Free`` when nothing is checked)."""
    return {f.name: f.metadata.get(RULE) for f in dataclasses.fields(schema)}


def check_section(section: Any, schema: type, prefix: str) -> None:
    """Check every field of ``section`` (a DictConfig or dataclass instance) against ``schema``'s rules."""
    for name, rule in rules_of(schema).items():
        if rule is None:
            raise TypeError(f"{schema.__name__}.{name} declares no validation rule; give it one (Free() for none).")
        nested = next(f for f in dataclasses.fields(schema) if f.name == name).default_factory
        if dataclasses.is_dataclass(nested):  # a nested section (heldout.lm_eval): its own fields' rules
            check_section(getattr(section, name), nested, f"{prefix}.{name}")
        else:
            check_value(f"{prefix}.{name}", getattr(section, name), rule)
