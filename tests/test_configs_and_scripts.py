"""The configs as a user composes them, and the scripts as a user runs them (in the style of
lightning-hydra-template's tests)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from omegaconf import OmegaConf

from .conftest import ROOT, SEEDS_ANN, TINY, compose

EXPERIMENTS = sorted(p.stem for p in (ROOT / "configs" / "experiment").glob("*.yaml"))


def _leaves(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_resolves_and_takes_effect(name):
    cfg = compose(f"experiment={name}")
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    spec = yaml.safe_load((ROOT / "configs" / "experiment" / f"{name}.yaml").read_text(encoding="utf-8"))
    for key, value in _leaves(spec):
        got = OmegaConf.select(cfg, key)
        if isinstance(value, str) and "${" in value:
            continue  # an interpolation: resolved above
        assert got == value, f"experiment {name}: {key} is {got!r}, the experiment says {value!r}"


def test_every_config_group_option_composes():
    for group in ("model", "data", "train", "eval", "infer", "paths", "pretrain", "guideline"):
        for option in sorted((ROOT / "configs" / group).glob("*.yaml")):
            OmegaConf.to_container(compose(f"{group}={option.stem}"), resolve=True)


def test_the_schemas_type_every_group_and_refuse_typos():
    """Each group is checked against its dataclass (zh_policy_ner.common.config): the YAML has every key of
    the schema, a typo or a wrong type fails at composition, and values are typed."""
    from hydra.errors import ConfigCompositionException
    from omegaconf.errors import ConfigKeyError

    from zh_policy_ner.common.config import SCHEMAS

    cfg = compose()
    for group, schema in SCHEMAS.items():
        assert OmegaConf.get_type(cfg[group]) is schema, group
        OmegaConf.to_container(cfg[group], resolve=True, throw_on_missing=True)  # no key left ???
    assert isinstance(cfg.infer.max_length, int) and isinstance(cfg.train.lr, float)
    with pytest.raises(ConfigCompositionException, match="train.lrr"):
        compose("train.lrr=1")
    with pytest.raises(ConfigCompositionException, match="train.epochs"):
        compose("train.epochs=abc")
    with pytest.raises(ConfigKeyError, match="batchsize"):  # what an experiment file with a typo meets
        OmegaConf.merge(cfg, {"train": {"batchsize": 8}})
    # per-label settings take plain overrides, one label or the whole mapping
    assert compose("train.label_weights.POLICY=3").train.label_weights.POLICY == 3.0
    assert compose("train.label_weights={POLICY:2}").train.label_weights == {"PER": 1.0, "LOC": 1.0, "POLICY": 2.0}
    assert compose("infer.min_score={POLICY:0.6}").infer.min_score == {"POLICY": 0.6}


def _run(script: str, *overrides: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("PROJECT_ROOT", None)  # the scripts find the repository themselves
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / script), *overrides], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_train_quick_then_predict_as_a_user_runs_them(tiny_model_dir, tmp_path):
    """``python scripts/train.py experiment=quick`` then ``python scripts/predict.py`` in fresh
    processes from another folder: the model folder carries its span layers and ONNX export, the
    predictions and reports are where the scripts say they are."""
    out = tmp_path / "outputs"
    tiny = [o for o in TINY if not o.startswith("train.max_steps")]
    train = _run("train.py", "experiment=quick", f"model.name_or_path={tiny_model_dir}", f"paths.output_dir={out}",
                 f"data.annotations={SEEDS_ANN}", "train.max_steps=2", *tiny, f"hydra.run.dir={tmp_path / 'h1'}",
                 cwd=tmp_path)
    model = out / "quick"  # the experiment's train.output_dir
    assert str(model) in train.stdout
    assert json.loads((model / "layers.json").read_text())["layers"] == ["places:fill", "gazetteer:overwrite",
                                                                          "abbreviations:fill"]
    assert json.loads((model / "layers.json").read_text())["min_score"] == {"PER": 0.0, "LOC": 0.0, "POLICY": 0.8}
    assert (model / "metrics.json").exists() and (model / "gazetteer.json").exists()
    inputs = tmp_path / "reports"
    inputs.mkdir()
    (inputs / "r1.txt").write_text("市委书记谭作钧主持会议,要求加强核酸检测。", encoding="utf-8")
    pred = _run("predict.py", f"infer.model_dir={model}", f"infer.input={inputs}", f"infer.output={tmp_path / 'p.jsonl'}",
                "infer.max_length=64", "infer.stride=16", f"hydra.run.dir={tmp_path / 'h2'}", cwd=tmp_path)
    assert f"predictions written to {tmp_path / 'p.jsonl'}" in pred.stdout
    (record,) = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text(encoding="utf-8").splitlines()]
    assert record["doc_id"] == "r1"
    assert "谭作钧" in {s["text"] for s in record["spans"]}  # a training mention, through the gazetteer layer
    assert (tmp_path / "p.html").exists() and "html:" in pred.stdout
