"""The labelling guideline as data: the word lists and patterns of the rules (the ``guideline``
config group, ``configs/guideline/<name>.yaml``), compiled once into what the rules use
(:mod:`zh_policy_ner.rules.lexicon`, the span tidying of :mod:`zh_policy_ner.rules.layers`, :mod:`zh_policy_ner.training.silver`).

A trained model saves the guideline it was trained with (``guideline.yaml`` in its folder), so that
prediction and evaluation run its very rules, whatever the configs say later. Each rule names the
label it outputs; :func:`check_labels` refuses a guideline whose labels the data does not have. A
rule left out of the file (``guideline=none`` leaves out all) finds nothing.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import yaml

from ..common.cli import UsageError

GUIDELINE_FILE = "guideline.yaml"  # saved with a trained model
# what a guideline file may hold: per rule, its keys and their kinds ("words": a list of strings,
# "chars": a string of characters, "pattern": a regular expression, "map": word -> characters)
SPEC: dict[str, dict[str, str]] = {
    "formulas": {"label": "str", "numerals": "chars", "min_length": "int", "not_formula": "pattern", "not_before": "words"},
    "measure_phrases": {"label": "str", "verbs": "words", "degree": "words", "heads": "words", "ends": "words",
                        "leads": "words", "not_measure": "pattern"},
    "names": {"label": "str", "speech_verbs": "words", "straddling": "map"},
    "places": {"label": "str", "ambiguous": "words", "province_abbreviations": "chars", "not_abbreviation": "chars",
               "abbreviation": "pattern"},
    "silver": {"domain_words": "words"},
    "spans": {"whole_words": "words", "never_adjacent": "words"},
}
LABELLED = ("formulas", "measure_phrases", "names", "places")  # the rules that output a label
_KINDS = {"str": lambda v: isinstance(v, str) and bool(v), "chars": lambda v: isinstance(v, str),
          "pattern": lambda v: isinstance(v, str), "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
          "words": lambda v: isinstance(v, list) and all(isinstance(w, str) and w for w in v),
          "map": lambda v: isinstance(v, dict) and all(isinstance(k, str) and isinstance(c, str) for k, c in v.items())}


_DESCRIBE = {"str": "a non-empty string", "chars": "a string of characters", "pattern": "a regular expression",
             "int": "an integer", "words": "a list of words (strings)", "map": "a mapping of words to characters"}


@dataclass(frozen=True, eq=False)
class Guideline:
    """A guideline, read: ``data`` as written (``source``: where from, for messages), plus the sets
    and compiled patterns of its rules; an absent rule gives empty sets and no pattern."""

    data: dict[str, Any]
    source: str = "guideline"
    _key: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_key", json.dumps(self.data, sort_keys=True, ensure_ascii=False))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Guideline) and other._key == self._key

    def __hash__(self) -> int:  # caches of compiled tables are keyed by the guideline's content
        return hash(self._key)

    @property
    def key(self) -> str:
        """The guideline's content as canonical JSON (for hashes and caches)."""
        return self._key

    @property
    def name(self) -> str:
        return str(self.data.get("name", "unnamed"))

    def has(self, rule: str) -> bool:
        return isinstance(self.data.get(rule), dict)

    def label(self, rule: str) -> str | None:
        """The label ``rule`` outputs (``None`` when the guideline has no such rule)."""
        return self.data[rule].get("label") if self.has(rule) else None

    def _get(self, rule: str, key: str, empty: Any = ()) -> Any:
        return self.data[rule].get(key, empty) if self.has(rule) else empty

    def _pattern(self, rule: str, key: str) -> re.Pattern | None:
        value = self._get(rule, key, None)
        return re.compile(value) if value else None

    # POLICY 1: quoted formulas
    numerals = cached_property(lambda self: frozenset(self._get("formulas", "numerals", "")))
    not_formula = cached_property(lambda self: self._pattern("formulas", "not_formula"))
    not_before = cached_property(lambda self: tuple(self._get("formulas", "not_before")))
    min_formula_length = cached_property(lambda self: int(self._get("formulas", "min_length", 3)))
    # POLICY 2: measure phrases
    not_measure = cached_property(lambda self: self._pattern("measure_phrases", "not_measure"))
    # PER
    speech_verbs = cached_property(lambda self: tuple(self._get("names", "speech_verbs")))
    straddling = cached_property(lambda self: {v: frozenset(c) for v, c in self._get("names", "straddling", {}).items()})
    # LOC
    ambiguous_places = cached_property(lambda self: frozenset(self._get("places", "ambiguous")))
    province_abbreviations = cached_property(lambda self: frozenset(self._get("places", "province_abbreviations", "")))
    not_abbreviation = cached_property(lambda self: frozenset(self._get("places", "not_abbreviation", "")))
    abbreviation = cached_property(lambda self: self._pattern("places", "abbreviation"))
    # the silver stage
    domain_words = cached_property(lambda self: tuple(self._get("silver", "domain_words")))
    # what a decoded span may be (Viterbi decoding)
    whole_words = cached_property(lambda self: frozenset(self._get("spans", "whole_words")))
    never_adjacent = cached_property(lambda self: frozenset(self._get("spans", "never_adjacent")))

    @cached_property
    def phrase(self) -> re.Pattern | None:
        """POLICY 2: a verb, an optional degree word, then 2-8 characters up to a measure head, before an end."""
        if not self.has("measure_phrases"):
            return None
        mp = self.data["measure_phrases"]
        verbs, degree, heads, ends = ("|".join(mp[k]) for k in ("verbs", "degree", "heads", "ends"))
        return re.compile(rf"(?:{verbs})(?:{degree})?((?:(?!{ends}).){{2,8}}?(?:{heads}))(?={ends})")

    @cached_property
    def phrase_lead(self) -> re.Pattern | None:
        """What a measure phrase's span leaves out at its start: verbs, degree words, leads."""
        if not self.has("measure_phrases"):
            return None
        mp = self.data["measure_phrases"]
        return re.compile(rf"^(?:{'|'.join([*mp['verbs'], *mp['degree'], *mp['leads']])})+")

    def check(self) -> "Guideline":
        """Only the rules and keys of :data:`SPEC`, each of its kind (a word list is a list of
        strings: ``speech_verbs: 强调`` is refused, not read as two characters), every labelled rule
        with its label, every pattern compiling; a problem raises ``ValueError`` naming the source
        and the rule."""
        for rule, body in self.data.items():
            if rule == "name":
                continue
            if rule not in SPEC:
                raise ValueError(f"{self.source}: unknown rule {rule!r}: a guideline holds {', '.join(SPEC)} (and name)")
            if not isinstance(body, dict):
                raise ValueError(f"{self.source}: rule {rule!r} is not a mapping of its settings")
            for key, value in body.items():
                kind = SPEC[rule].get(key)
                if kind is None:
                    raise ValueError(f"{self.source}: {rule}.{key} is not a setting of {rule} "
                                     f"(it has {', '.join(SPEC[rule])})")
                if not _KINDS[kind](value):
                    raise ValueError(f"{self.source}: {rule}.{key} must be {_DESCRIBE[kind]}, got {value!r}")
                if kind == "pattern":
                    try:
                        re.compile(value)
                    except re.error as err:
                        raise ValueError(f"{self.source}: {rule}.{key}: {err}") from None
        for rule in LABELLED:
            if rule in self.data and not (self.has(rule) and self.data[rule].get("label")):
                raise ValueError(f"{self.source}: rule {rule!r} names no label")
        if self.has("measure_phrases"):
            missing = [k for k in ("verbs", "degree", "heads", "ends", "leads") if not self.data["measure_phrases"].get(k)]
            if missing:
                raise ValueError(f"{self.source}: measure_phrases: {', '.join(missing)} missing or empty")
        for name in ("phrase", "phrase_lead"):
            try:
                getattr(self, name)
            except re.error as err:
                raise ValueError(f"{self.source}: measure_phrases ({name}): {err}") from None
        return self

    def save(self, folder: str | Path) -> Path:
        """Write ``guideline.yaml`` into a model folder."""
        path = Path(folder) / GUIDELINE_FILE
        path.write_text(f"# the guideline this model was trained with ({self.source})\n"
                        + yaml.safe_dump(self.data, allow_unicode=True, sort_keys=False), encoding="utf-8")
        return path


def load_guideline(path: str | Path) -> Guideline:
    """Read and check a guideline file (a ``configs/guideline/`` file or a model folder's)."""
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a guideline file is a mapping of rules")
    return Guideline(data, str(path)).check()


@lru_cache(maxsize=8)
def _from_key(key: str, source: str) -> Guideline:
    return Guideline(json.loads(key), source).check()


def guideline_from_config(cfg: Any) -> Guideline:
    """The run's guideline: the composed ``guideline`` group (``guideline=zh_policy``, ``none`` or
    your own file in ``configs/guideline/``); a problem is a one-line usage error."""
    from omegaconf import OmegaConf

    node = cfg.get("guideline")
    data = OmegaConf.to_container(node, resolve=True) if node is not None else {}
    source = f"guideline {data.get('name', 'unnamed')!r} (configs/guideline/)"
    try:
        return _from_key(json.dumps(data, sort_keys=True, ensure_ascii=False), source)
    except ValueError as err:
        raise UsageError(str(err)) from None


def saved_guideline(model_dir: str | Path, fallback: Guideline | None = None) -> Guideline:
    """The guideline saved with a trained model; ``fallback`` (the run's, :func:`guideline_from_config`)
    for a folder trained before models saved theirs; neither raises ``FileNotFoundError``."""
    path = Path(model_dir) / GUIDELINE_FILE
    if path.exists():
        return load_guideline(path)
    if fallback is None:
        raise FileNotFoundError(f"{path} not found: the folder was saved before models kept their guideline; "
                                f"retrain it, or pass the guideline it was trained with (the scripts pass the "
                                f"configured one, guideline=...)")
    return fallback


def check_labels(labels: list[str] | tuple[str, ...], guideline: Guideline) -> None:
    """Refuse (``ValueError``, naming the rule) a guideline whose rules output or name a label that
    is not among ``labels`` (``data.labels``)."""
    missing = [f"rule {rule} outputs {guideline.label(rule)}" for rule in LABELLED
               if guideline.has(rule) and guideline.label(rule) not in labels]
    missing += [f"rule spans.{key} names {lab}" for key in ("whole_words", "never_adjacent")
                for lab in sorted(getattr(guideline, key)) if lab not in labels]
    if missing:
        raise ValueError(f"{guideline.source}: " + "; ".join(missing) + f", which is not among data.labels={list(labels)}")


def check_guideline_labels(cfg: Any, guideline: Guideline | None = None) -> Guideline:
    """:func:`check_labels` of ``guideline`` (default: the run's) against ``cfg.data.labels`` at a
    stage's start, as a one-line usage error; returns the guideline."""
    guideline = guideline or guideline_from_config(cfg)
    try:
        check_labels(list(cfg.data.labels), guideline)
    except ValueError as err:
        raise UsageError(str(err)) from None
    return guideline
