"""The labelling guideline as data: word lists and patterns read from a YAML file
(``guidelines/zh_policy.yaml``, shipped with the package), compiled once into the patterns the rules
use (:mod:`.lexicon`, the span tidying of :mod:`.inference`, :mod:`.silver`). Each rule names the
label it outputs; :func:`check_labels` refuses a guideline whose labels the data does not have."""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from .cli import UsageError

DEFAULT_GUIDELINE = Path(__file__).with_name("guidelines") / "zh_policy.yaml"
RULES = ("formulas", "measure_phrases", "names", "places")  # the rules that output a label


def _field(rule: str, key: str, kind: Any) -> property:
    """A guideline entry read as ``kind``: ``frozenset`` (a set of words or characters), ``tuple``
    (an ordered list) or :func:`_compile` (a pattern)."""
    return property(lambda self: kind(self.data[rule][key]), doc=f"{rule}.{key} of the guideline file")


@dataclass(frozen=True)
class Guideline:
    """A guideline file, read: ``data`` as written, plus the sets and compiled patterns of its rules."""

    path: str
    data: dict[str, Any]

    def label(self, rule: str) -> str:
        return self.data[rule]["label"]

    numerals = _field("formulas", "numerals", frozenset)                 # POLICY 1: quoted formulas
    not_formula = _field("formulas", "not_formula", lambda p: _compile(p))
    not_measure = _field("measure_phrases", "not_measure", lambda p: _compile(p))  # POLICY 2
    speech_verbs = _field("names", "speech_verbs", tuple)                # PER
    ambiguous_places = _field("places", "ambiguous", frozenset)          # LOC
    province_abbreviations = _field("places", "province_abbreviations", frozenset)
    not_abbreviation = _field("places", "not_abbreviation", frozenset)
    abbreviation = _field("places", "abbreviation", lambda p: _compile(p))
    domain_words = _field("silver", "domain_words", tuple)               # the silver stage

    @property
    def phrase(self) -> re.Pattern:
        """POLICY 2: a verb, an optional degree word, then 2-8 characters up to a measure head, before an end."""
        mp = self.data["measure_phrases"]
        verbs, degree, heads, ends = ("|".join(mp[k]) for k in ("verbs", "degree", "heads", "ends"))
        return _compile(rf"(?:{verbs})(?:{degree})?((?:(?!{ends}).){{2,8}}?(?:{heads}))(?={ends})")

    @property
    def phrase_lead(self) -> re.Pattern:
        """What a measure phrase's span leaves out at its start: verbs, degree words, leads."""
        mp = self.data["measure_phrases"]
        return _compile(rf"^(?:{'|'.join([*mp['verbs'], *mp['degree'], *mp['leads']])})+")


@lru_cache(maxsize=None)
def _compile(pattern: str) -> re.Pattern:
    return re.compile(pattern)


@lru_cache(maxsize=8)
def load_guideline(path: str | Path = DEFAULT_GUIDELINE) -> Guideline:
    """Read and check a guideline file: every rule present with a label, every pattern compiling;
    a problem raises ``ValueError`` naming the file and the rule."""
    path = Path(path)
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    guideline = Guideline(str(path), data)
    for rule in RULES:
        if not isinstance(data.get(rule), dict) or not data[rule].get("label"):
            raise ValueError(f"{path}: rule {rule!r} is missing or names no label")
    for name in ("not_formula", "phrase", "phrase_lead", "not_measure", "abbreviation"):
        try:
            getattr(guideline, name)
        except (re.error, KeyError, TypeError) as err:
            raise ValueError(f"{path}: {name}: {err}") from None
    return guideline


def check_labels(labels: list[str] | tuple[str, ...], guideline: Guideline | None = None) -> None:
    """Refuse (``ValueError``, naming the rule) a guideline whose rules output a label that is not
    among ``labels`` (``data.labels``)."""
    guideline = guideline or load_guideline()
    missing = {rule: guideline.label(rule) for rule in RULES if guideline.label(rule) not in labels}
    if missing:
        raise ValueError(f"{guideline.path}: " + "; ".join(f"rule {r} outputs {lab}" for r, lab in missing.items())
                         + f", which is not among data.labels={list(labels)}")


def check_guideline_labels(cfg: Any) -> None:
    """:func:`check_labels` against ``cfg.data.labels`` at a stage's start, as a one-line usage error."""
    try:
        check_labels(list(cfg.data.labels))
    except ValueError as err:
        raise UsageError(str(err)) from None
