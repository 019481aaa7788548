"""The guideline as data: a Hydra config group the rules compile, checked, saved with the model."""
from __future__ import annotations

import pytest
import yaml

from zh_policy_ner.common.cli import UsageError
from zh_policy_ner.rules.guideline import (GUIDELINE_FILE, Guideline, check_labels, guideline_from_config, load_guideline,
                                     saved_guideline)
from zh_policy_ner.rules.layers import SpanLayers, parse_layers, tidy_spans
from zh_policy_ner.rules.lexicon import DictionaryTagger, measure_phrases, place_abbreviations, quoted_formulas

from .conftest import GUIDELINE, compose, tiny_config

TEXT = "市委书记王凯强调,要加强社区管控,落实“两手抓”,返鄂人员到大连市"


def _variant(tmp_path, change) -> str:
    data = yaml.safe_load(GUIDELINE.read_text(encoding="utf-8"))
    change(data)
    path = tmp_path / "guideline.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return str(path)


def _found(spans, text=TEXT):
    return [(text[s:e], lab) for s, e, lab in spans]


def test_the_project_guideline_drives_the_rules(guideline):
    assert {guideline.label(r) for r in ("formulas", "measure_phrases", "names", "places")} == {"POLICY", "PER", "LOC"}
    assert _found(measure_phrases(TEXT, guideline)) == [("社区管控", "POLICY")]
    assert _found(quoted_formulas(TEXT, guideline)) == [("两手抓", "POLICY")]
    assert _found(place_abbreviations(TEXT, [], guideline)) == [("鄂", "LOC")]
    # the composed config group is the same guideline as the file
    assert guideline_from_config(compose()) == guideline


def test_guideline_none_runs_no_rules(guideline):
    none = guideline_from_config(compose("guideline=none"))
    assert none.name == "none" and none != guideline
    assert measure_phrases(TEXT, none) == quoted_formulas(TEXT, none) == place_abbreviations(TEXT, [], none) == []
    layers = SpanLayers(parse_layers(["places", "abbreviations"]), guideline=none)
    assert layers(TEXT, []) == []  # no place table, no abbreviations
    name = (TEXT.index("王凯强调"), TEXT.index("王凯强调") + 4, "PER")
    assert _found(tidy_spans(TEXT, [name], none)) == [("王凯强调", "PER")]        # no speech verbs to cut
    assert _found(tidy_spans(TEXT, [name], guideline)) == [("王凯", "PER")]
    check_labels(["ANYTHING"], none)  # no rule outputs a label
    with pytest.raises(ValueError, match="pass the guideline"):
        DictionaryTagger({}, formulas=True)


def test_one_entry_overridden_on_the_command_line(guideline):
    text = "要着力推动社区管控。"
    assert measure_phrases(text, guideline) == []
    g = guideline_from_config(compose("guideline.measure_phrases.verbs=['推动']"))
    assert _found(measure_phrases(text, g), text) == [("社区管控", "POLICY")]


def test_another_guideline_file_changes_what_the_rules_find(tmp_path, guideline):
    text = "要着力推动社区管控。"
    g = load_guideline(_variant(tmp_path, lambda d: d["measure_phrases"]["verbs"].append("推动")))
    assert g.phrase.search(text).group(1) == "社区管控" and not guideline.phrase.search(text)


def test_labels_are_checked_against_the_data(tmp_path):
    g = load_guideline(_variant(tmp_path, lambda d: d["formulas"].update(label="MEASURE")))
    with pytest.raises(ValueError, match="rule formulas outputs MEASURE"):
        check_labels(["PER", "LOC", "POLICY"], g)
    check_labels(["PER", "LOC", "POLICY", "MEASURE"], g)
    g = load_guideline(_variant(tmp_path, lambda d: d["spans"].update(whole_words=["POLICY", "ORG"])))
    with pytest.raises(ValueError, match="rule spans.whole_words names ORG"):
        check_labels(["PER", "LOC", "POLICY"], g)
    from zh_policy_ner.training.train import train

    with pytest.raises(UsageError, match="rule formulas outputs POLICY.*data.labels"):
        train(compose("data.labels=[PER,LOC]", f"train.output_dir={tmp_path / 'm'}"))


def test_a_broken_guideline_names_the_file_and_the_rule(tmp_path):
    with pytest.raises(ValueError, match="guideline.yaml: places.abbreviation"):
        load_guideline(_variant(tmp_path, lambda d: d["places"].update(abbreviation="(unclosed")))
    with pytest.raises(ValueError, match="rule 'names' names no label"):
        load_guideline(_variant(tmp_path, lambda d: d["names"].pop("label")))
    with pytest.raises(ValueError, match="measure_phrases: heads missing or empty"):
        load_guideline(_variant(tmp_path, lambda d: d["measure_phrases"].update(heads=[])))
    with pytest.raises(UsageError, match="formulas.not_formula"):
        guideline_from_config(compose("guideline.formulas.not_formula='(x'"))
    # kinds and names are checked: a word list given as a string, a typo, a number that is not one
    for override, message in (("guideline.names.speech_verbs='强调'", "names.speech_verbs must be a list of words"),
                              ("+guideline.place={label: LOC}", "unknown rule 'place'"),
                              ("+guideline.places.ambigous=['东方']", "places.ambigous is not a setting of places"),
                              ("guideline.formulas.min_length=abc", "formulas.min_length must be an integer")):
        with pytest.raises(UsageError, match=message):
            guideline_from_config(compose(override))


def test_the_model_saves_its_guideline_and_prediction_runs_it(tiny_model_dir, tmp_path, guideline):
    """Trained with one guideline, a model predicts with it, whatever the run's config says."""
    from zh_policy_ner.decoding.inference import Predictor
    from zh_policy_ner.training.train import train

    out = tmp_path / "m"
    cfg = tiny_config(tiny_model_dir, tmp_path, f"train.output_dir={out}", "train.max_steps=1",
                      "guideline.names.speech_verbs=['强调','指出','部署']")
    train(cfg)
    saved = saved_guideline(out)
    assert (out / GUIDELINE_FILE).exists() and saved.speech_verbs[-1] == "部署" and saved != guideline
    predictor = Predictor.from_config(str(out), compose("guideline=none"))
    assert predictor.layers.guideline == saved  # the model's own, not the run's
    # a folder trained before models saved their guideline runs the one it is given
    (out / GUIDELINE_FILE).unlink()
    assert Predictor.from_config(str(out), compose()).layers.guideline == guideline
    with pytest.raises(FileNotFoundError, match="guideline.yaml not found: the folder was saved before"):
        saved_guideline(out)
    assert isinstance(saved, Guideline)
