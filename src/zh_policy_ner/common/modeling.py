"""Loading models and tokenizers by local folder or hub name, failing fast and clearly offline."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# Where the embedded default model lives, relative to the repository root.
MLM_MODEL_DIR = Path(__file__).resolve().parents[3] / "models" / "zh-policy-char-bert"  # scripts/pretrain.py
DEFAULT_MODEL_DIR = MLM_MODEL_DIR.with_name("zh-policy-char-bert-silver")  # scripts/silver.py, the default


class ModelNotAvailable(RuntimeError):
    """A model name that is neither a local folder nor reachable (offline hub)."""


def _in_hf_cache(name: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:
        return False


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or ""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def resolve_model_path(name_or_path: str | os.PathLike) -> str:
    """Return what ``from_pretrained`` should get: a local folder, a cached or reachable hub name.

    Raises :class:`ModelNotAvailable` at once (no long download retries) when the name is not a
    folder and the hub cannot be reached, with the override that selects the embedded model.
    """
    name = str(name_or_path)
    if Path(name).expanduser().is_dir():
        if not (Path(name).expanduser() / "config.json").exists():
            raise ModelNotAvailable(f"model folder {name} has no config.json: not a transformers model folder")
        return str(Path(name).expanduser())
    if _in_hf_cache(name) or _hub_reachable():
        return name
    raise ModelNotAvailable(
        f"model {name!r} is not a local folder and the model hub cannot be reached (offline). "
        f"Use the embedded model: `model=embedded` (folder {DEFAULT_MODEL_DIR}), or point "
        f"`model.name_or_path=/path/to/local/folder` at a downloaded copy."
    )


def load_tokenizer(name_or_path: str | os.PathLike):
    """A fast tokenizer (character offsets are required) for a model folder or hub name."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(name_or_path))
    if not tokenizer.is_fast:
        raise ModelNotAvailable(f"{name_or_path}: a fast tokenizer is required (character offsets); got {type(tokenizer).__name__}")
    return tokenizer


def use_bf16(setting: Any = "auto") -> bool:
    """bf16 autocast: on GPUs that support it, and on CPUs with AMX/AVX512-BF16 when ``auto``."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported() and setting is not False
    if setting == "auto":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except Exception:
            return False
    return bool(setting)


def progress_callback():
    """A Trainer callback that logs ``step N/M, loss, elapsed, eta`` at every logging step: the
    progress line for runs without a terminal (where Trainer's progress bar is off)."""
    import logging
    import time

    from transformers import TrainerCallback

    log = logging.getLogger("zh_policy_ner.progress")

    class EtaLogger(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.t0, self.step0 = time.time(), state.global_step

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not args.disable_tqdm or not logs or not state.max_steps:
                return
            if "loss" in logs:
                done = state.global_step - self.step0
                elapsed = time.time() - self.t0
                eta = elapsed / done * (state.max_steps - state.global_step) if done else float("nan")
                log.info("step %d/%d  loss %.4f  elapsed %.0fs  eta %.0fs", state.global_step, state.max_steps,
                         logs["loss"], elapsed, eta)
            elif any(k.startswith("eval_") for k in logs):
                log.info("step %d/%d  %s", state.global_step, state.max_steps,
                         "  ".join(f"{k} {v:.4g}" for k, v in logs.items() if k.startswith("eval_")
                                   and isinstance(v, float) and "runtime" not in k and "per_second" not in k))

    return EtaLogger()


def attach_progress(trainer) -> None:
    """Progress as one log line per logging step (:func:`progress_callback`) in place of the raw
    dicts that Trainer prints when there is no progress bar (each step would show twice)."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(progress_callback())


def last_complete_checkpoint(folder: str | os.PathLike, prune: bool = False) -> str | None:
    """The newest ``checkpoint-N`` in ``folder`` that Trainer finished writing (its
    ``trainer_state.json``, written last, is there and parses), or None. Newer half-written ones
    (a run stopped while saving) are passed over; with ``prune`` each is logged and deleted, since
    the resumed run writes a checkpoint of that step afresh and stale files must not mix in."""
    import json
    import logging
    import re
    import shutil

    folder = Path(folder)
    if not folder.is_dir():
        return None
    steps = {p: int(m.group(1)) for p in folder.iterdir() if p.is_dir() and (m := re.fullmatch(r"checkpoint-(\d+)", p.name))}
    for ckpt in sorted(steps, key=steps.get, reverse=True):
        try:
            json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8"))
            return str(ckpt)
        except (OSError, ValueError):
            if prune:
                logging.getLogger(__name__).warning(
                    "%s is incomplete (no readable trainer_state.json: the run stopped while saving it): removed", ckpt)
                shutil.rmtree(ckpt, ignore_errors=True)
    return None


def save_half(model, tokenizer, folder: Path) -> None:
    """Save a shippable folder: fp16 safetensors whose config says float32 (loads as fp32), and the
    tokenizer; ``model`` is left in fp32."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    model.to(torch.float16).save_pretrained(str(folder), safe_serialization=True)
    model.config.torch_dtype = "float32"
    model.config.save_pretrained(str(folder))
    model.to(torch.float32)
    tokenizer.save_pretrained(str(folder))
