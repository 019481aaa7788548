"""The guideline as data: the rules compile what the file says, and its labels are checked."""
from __future__ import annotations

import pytest
import yaml

from zh_policy_ner.cli import UsageError
from zh_policy_ner.guideline import DEFAULT_GUIDELINE, check_labels, load_guideline
from zh_policy_ner.lexicon import measure_phrases, place_abbreviations, quoted_formulas

from .conftest import compose


def _variant(tmp_path, change) -> str:
    data = yaml.safe_load(DEFAULT_GUIDELINE.read_text(encoding="utf-8"))
    change(data)
    path = tmp_path / "guideline.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return str(path)


def test_the_shipped_guideline_drives_the_rules():
    g = load_guideline()
    assert {g.label(r) for r in ("formulas", "measure_phrases", "names", "places")} == {"POLICY", "PER", "LOC"}
    text = "要加强社区管控,落实“两手抓”,返鄂人员"
    assert [text[s:e] for s, e, _ in measure_phrases(text)] == ["社区管控"]
    assert [text[s:e] for s, e, _ in quoted_formulas(text)] == ["两手抓"]
    assert [text[s:e] for s, e, _ in place_abbreviations(text, [])] == ["鄂"]


def test_another_guideline_file_changes_what_the_rules_find(tmp_path):
    text = "要着力推动社区管控。"
    assert not load_guideline().phrase.search(text)
    g = load_guideline(_variant(tmp_path, lambda d: d["measure_phrases"]["verbs"].append("推动")))
    assert g.phrase.search(text).group(1) == "社区管控"


def test_labels_are_checked_against_the_data(tmp_path):
    g = load_guideline(_variant(tmp_path, lambda d: d["formulas"].update(label="MEASURE")))
    with pytest.raises(ValueError, match="rule formulas outputs MEASURE"):
        check_labels(["PER", "LOC", "POLICY"], g)
    check_labels(["PER", "LOC", "POLICY", "MEASURE"], g)
    from zh_policy_ner.training import train

    with pytest.raises(UsageError, match="rule formulas outputs POLICY.*data.labels"):
        train(compose("data.labels=[PER,LOC]", f"train.output_dir={tmp_path / 'm'}"))


def test_a_broken_guideline_names_the_file_and_the_rule(tmp_path):
    with pytest.raises(ValueError, match="guideline.yaml: abbreviation"):
        load_guideline(_variant(tmp_path, lambda d: d["places"].update(abbreviation="(unclosed")))
    with pytest.raises(ValueError, match="rule 'names' is missing"):
        load_guideline(_variant(tmp_path, lambda d: d.pop("names")))
