"""The scripts' shared behaviour (zh_policy_ner.common.cli): plain failures (exit 2), Ctrl-C (exit 130),
quiet third parties, safe outputs; plus the prepare stage's folder swap and resuming past a
half-written checkpoint."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from zh_policy_ner.common import cli

from .conftest import ROOT, SEED_IDS, compose, tiny_config


def run_script(script: str, *overrides: str, tmp: Path, interrupt: tuple[str, str] | None = None):
    """``python scripts/<script>.py overrides`` in a fresh process (Hydra's run folder in ``tmp``);
    ``interrupt=(module, function)`` makes that function raise KeyboardInterrupt, as Ctrl-C would."""
    env = {k: v for k, v in os.environ.items() if k != cli.QUIET_ENV}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PROJECT_ROOT=str(ROOT), TOKENIZERS_PARALLELISM="false")
    path = str(ROOT / "scripts" / f"{script}.py")
    argv = [path, *overrides, f"hydra.run.dir={tmp / 'hydra'}"]
    if interrupt is None:
        cmd = [sys.executable, *argv]
    else:
        module, function = interrupt
        cmd = [sys.executable, "-c",
               "import importlib, runpy, sys\n"
               f"def interrupted(*a, **k):\n    raise KeyboardInterrupt\n"
               f"setattr(importlib.import_module({module!r}), {function!r}, interrupted)\n"
               f"sys.argv = {argv!r}\n"
               f"runpy.run_path({path!r}, run_name='__main__')\n"]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


@pytest.fixture()
def restore_quiet():
    from transformers.utils import logging as hf_logging

    env, bars = os.environ.get(cli.QUIET_ENV), hf_logging.is_progress_bar_enabled()
    yield
    if env is None:
        os.environ.pop(cli.QUIET_ENV, None)
    else:
        os.environ[cli.QUIET_ENV] = env
    (hf_logging.enable_progress_bar if bars else hf_logging.disable_progress_bar)()


# --------------------------------------------------------------------------- predict fails early
@pytest.mark.parametrize("case", ["input unset", "input missing", "model missing"])
def test_predict_checks_inputs_and_model_first(case, model_dir, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "a.txt").write_text("县委书记张三在会上强调，要做好疫情防控工作。", encoding="utf-8")
    out = tmp_path / "out" / "pred.jsonl"
    overrides = {"input unset": ["infer.input=null", f"infer.model_dir={model_dir}"],
                 "input missing": [f"infer.input={tmp_path / 'nowhere'}", f"infer.model_dir={model_dir}"],
                 "model missing": [f"infer.input={inputs}", f"infer.model_dir={tmp_path / 'no-model'}"]}[case]
    r = run_script("predict", *overrides, f"infer.output={out}", tmp=tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and lines[0].startswith("error: infer."), r.stderr
    assert ("infer.model_dir" if case == "model missing" else "infer.input") in lines[0]
    assert not out.exists() and not out.with_suffix(".errors.jsonl").exists()


def test_predict_summary_names_only_files_that_exist_and_transformers_stays_quiet(model_dir, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "a.txt").write_text("县委书记张三在会上强调，要做好疫情防控工作。", encoding="utf-8")
    out = tmp_path / "out" / "pred.jsonl"
    r = run_script("predict", f"infer.input={inputs}", f"infer.model_dir={model_dir}", f"infer.output={out}",
                   "infer.max_length=64", "infer.stride=16", tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "errors.jsonl" not in r.stdout and not out.with_suffix(".errors.jsonl").exists()
    named = [Path(w.rstrip(",;)")) for w in r.stdout.split() if w.startswith(str(tmp_path))]
    assert named and all(p.exists() for p in named), r.stdout
    assert "Loading weights" not in r.stderr  # transformers' progress bar, off with quiet=true


# --------------------------------------------------------------------------- Ctrl-C
SCRIPTS = {  # script: (module and function its main calls, a phrase of what is kept)
    "predict": ("zh_policy_ner.prediction.predict", "run_predict", "the same command resumes"),
    "train": ("zh_policy_ner.training.train", "train", "resumes training from"),
    "evaluate": ("zh_policy_ner.evaluation.evaluate", "evaluate", "fold_probs.npz"),
    "pretrain": ("zh_policy_ner.model.pretrain", "pretrain", "no checkpoint written yet"),
    "silver": ("zh_policy_ner.training.silver", "export_silver_model", "tags-thulac.jsonl"),
    "prepare_data": ("zh_policy_ner.data.dataset", "prepare", "is as it was"),
}


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_ctrl_c_exits_130_with_one_line_saying_what_is_kept(script, tmp_path):
    module, function, phrase = SCRIPTS[script]
    # a finished checkpoint and a newer half-written one: the line names the finished one
    for name, state in (("checkpoint-3", "{}"), ("checkpoint-5", None)):
        (tmp_path / "model" / name).mkdir(parents=True)
        if state:
            (tmp_path / "model" / name / "trainer_state.json").write_text(state)
    r = run_script(script, f"train.output_dir={tmp_path / 'model'}", f"pretrain.output_dir={tmp_path / 'pretrain'}",
                   f"eval.output_dir={tmp_path / 'eval'}", f"data.output_dir={tmp_path / 'data'}",
                   f"infer.output={tmp_path / 'pred.jsonl'}", tmp=tmp_path, interrupt=(module, function))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 130, r.stderr
    assert "Traceback" not in r.stderr and len(lines) == 1 and lines[0].startswith("interrupted: "), r.stderr
    assert phrase in lines[0]
    if script == "train":
        assert "checkpoint-3 is kept" in lines[0]


def test_stage_turns_usage_errors_and_interrupts_into_one_line(capsys):
    with pytest.raises(SystemExit) as e, cli.stage(compose(), "nothing"):
        raise cli.UsageError("infer.input is not set:\n  point it somewhere")
    assert e.value.code == 2 and capsys.readouterr().err == "error: infer.input is not set: point it somewhere\n"
    with pytest.raises(SystemExit) as e, cli.stage(compose(), lambda: "the output is kept"):
        raise KeyboardInterrupt
    assert e.value.code == 130 and capsys.readouterr().err == "interrupted: the output is kept\n"
    with pytest.raises(ValueError), cli.stage(compose(), "nothing"):  # a bug still shows its traceback
        raise ValueError("bug")


# --------------------------------------------------------------------------- quiet
def test_quiet_silences_thulac_and_transformers_and_quiet_false_does_not(tiny_model_dir, capfd, restore_quiet):
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from zh_policy_ner.rules.baselines import _thulac

    assert compose().quiet is True and compose("quiet=false").quiet is False
    long_text = "疫情防控" * 100  # longer than the tiny tokenizer's 128 positions
    warnings: list[str] = []  # what reaches transformers' handlers (their streams may predate capfd)
    handler = logging.Handler()
    handler.emit = lambda record: warnings.append(record.getMessage())
    logging.getLogger("transformers.tokenization_utils_base").addHandler(handler)
    cli.set_quiet(True)
    _thulac.cache_clear()
    _thulac()
    AutoTokenizer.from_pretrained(tiny_model_dir)(long_text)
    with cli.silenced_stdout():
        print("chatter")
    captured = capfd.readouterr()
    assert "Model loaded succeed" not in captured.out and "chatter" not in captured.out
    assert not any("Token indices sequence length" in w for w in warnings)
    assert not hf_logging.is_progress_bar_enabled()  # "Loading weights", "Writing model shards"
    cli.set_quiet(False)
    AutoTokenizer.from_pretrained(tiny_model_dir)(long_text)
    with cli.silenced_stdout():
        print("chatter")
    captured = capfd.readouterr()
    logging.getLogger("transformers.tokenization_utils_base").removeHandler(handler)
    assert "chatter" in captured.out and any("Token indices sequence length" in w for w in warnings)
    assert hf_logging.is_progress_bar_enabled()


# --------------------------------------------------------------------------- prepare swaps its folder
def test_prepare_replaces_its_output_folder_whole(tiny_model_dir, tmp_path):
    from zh_policy_ner.data.dataset import prepare

    out = tmp_path / "data"
    base = [f"model.name_or_path={tiny_model_dir}", f"data.output_dir={out}", "data.max_length=64", "data.stride=16"]
    prepare(compose(*base, f"data.heldout=[{SEED_IDS[0]}]"))
    assert (out / "heldout").is_dir()
    prepare(compose(*base))
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "train"]  # the stale heldout split is gone
    assert set(json.loads((out / "manifest.json").read_text())["splits"]) == {"train"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no temporary sibling left
    (out / "notes.txt").write_text("mine")  # a folder holding other files is never replaced
    with pytest.raises(cli.UsageError, match="notes.txt"):
        prepare(compose(*base))
    assert (out / "notes.txt").exists() and (out / "train").is_dir()


# --------------------------------------------------------------------------- resume past a torn checkpoint
def test_resume_passes_over_a_half_written_checkpoint(tiny_model_dir, tmp_path, caplog):
    from zh_policy_ner.training.train import train

    def cfg(out, steps):
        return tiny_config(tiny_model_dir, out, f"train.output_dir={out}", "train.batch_size=8", "train.warmup=0",
                           "train.save_steps=2", f"train.max_steps={steps}")

    out = tmp_path / "a"
    train(cfg(out, 4))
    torn = out / "checkpoint-4"  # as if the run had stopped while saving it: no trainer_state.json yet
    (torn / "trainer_state.json").unlink()
    caplog.set_level("INFO", logger="zh_policy_ner")
    result = train(cfg(out, 4))  # the same command again
    assert result.metrics["resumed_from_step"] == 2 and result.metrics["steps"] == 4
    assert "checkpoint-4 is incomplete" in caplog.text and f"resuming from {out / 'checkpoint-2'}" in caplog.text
    assert (torn / "trainer_state.json").exists()  # written afresh by the resumed run
    # nothing complete: a fresh start, with a warning
    caplog.clear()
    fresh = tmp_path / "b"
    (fresh / "checkpoint-2").mkdir(parents=True)
    result = train(cfg(fresh, 2))
    assert result.metrics["resumed_from_step"] == 0 and result.metrics["steps"] == 2
    assert "no complete checkpoint" in caplog.text and "starting afresh" in caplog.text
