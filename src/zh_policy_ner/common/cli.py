"""What every script shares: plain one-line failures, Ctrl-C without a traceback, quiet third parties.

Each script's Hydra main is decorated with :func:`script` (or wraps its work in :func:`stage`)::

    @hydra.main(version_base="1.3", config_path="../configs", config_name="config")
    @script(lambda cfg: f"predictions so far are kept in {cfg.infer.output}; the same command resumes")
    def main(cfg): ...

- a :class:`UsageError` (bad inputs or settings, found before any long work starts) or a
  :class:`~zh_policy_ner.common.modeling.ModelNotAvailable` prints ``error: <one line>`` and exits 2;
- Ctrl-C prints ``interrupted: <what is kept>`` and exits 130 (the shell's code for SIGINT);
- with ``quiet: true`` (configs/config.yaml, the default) third-party chatter is silenced: THULAC's
  "Model loaded succeed", transformers' "Token indices sequence length is longer ..." warning and its
  "Loading weights" / "Writing model shards" progress bars. ``quiet=false`` shows them.

This module imports nothing heavy at import time: scripts import it before Hydra composes, and
importing it registers the config groups' schemas (:mod:`zh_policy_ner.common.config`).
"""
from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

from .config import register_configs
from .modeling import ModelNotAvailable, last_complete_checkpoint

register_configs()  # the groups' schemas, before any script's Hydra composes (see .config)

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
QUIET_ENV = "ZH_POLICY_NER_QUIET"  # inherited by worker processes (the silver stage's taggers)
_TOKENIZER_LOGGER = "transformers.tokenization_utils_base"


class UsageError(ValueError):
    """A problem with a command's inputs or settings, said in one line (exit code 2)."""


def quiet_enabled() -> bool:
    """Whether third-party chatter is silenced (the default, also outside the scripts)."""
    return os.environ.get(QUIET_ENV, "1").strip().lower() not in ("0", "false", "no", "")


class _DropMessages(logging.Filter):
    def __init__(self, *prefixes: str):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not (quiet_enabled() and str(record.msg).startswith(self.prefixes))


_TOO_LONG = _DropMessages("Token indices sequence length is longer")


def set_quiet(quiet: bool = True) -> None:
    """Silence (or let through) THULAC's load message, transformers' too-long-sequence warning
    (the windowing code tokenises whole articles on purpose, for offsets only) and transformers'
    weight-loading and shard-writing progress bars. The project's own progress stays."""
    os.environ[QUIET_ENV] = "1" if quiet else "0"
    logger = logging.getLogger(_TOKENIZER_LOGGER)
    if _TOO_LONG not in logger.filters:
        logger.addFilter(_TOO_LONG)  # reads the switch at each record: quiet=false lets them through
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers is a dependency
        return
    if quiet:
        hf_logging.disable_progress_bar()
    else:
        hf_logging.enable_progress_bar()
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency
        return
    if quiet:  # its "Map:" bars (e.g. adding lexicon features to the training windows)
        datasets.disable_progress_bars()
    else:
        datasets.enable_progress_bars()


@contextlib.contextmanager
def silenced_stdout() -> Iterator[None]:
    """Swallow what third-party code prints to stdout (THULAC's "Model loaded succeed") when quiet."""
    if not quiet_enabled():
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def ignore_sigint() -> None:
    """Worker-process initializer: Ctrl-C is the parent's to handle (no traceback per worker)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _say(prefix: str, message: str) -> None:
    lead = "\n" if sys.stderr.isatty() else ""  # off the ^C and any progress bar's line
    print(f"{lead}{prefix}: {' '.join(str(message).split())}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def stage(cfg: Any = None, kept: str | Callable[[], str] = "nothing is kept") -> Iterator[None]:
    """Run a script's work: one line and exit 2 for a :class:`UsageError` or an unavailable model,
    one line saying what is kept (``kept``, a string or a function called at that moment) and exit
    130 on Ctrl-C; ``cfg.quiet`` (default true) silences third-party chatter meanwhile."""
    quiet = True
    if cfg is not None:
        quiet = bool(cfg.get("quiet", True)) if hasattr(cfg, "get") else bool(getattr(cfg, "quiet", True))
    try:
        set_quiet(quiet)
        yield
    except KeyboardInterrupt:
        try:
            message = kept() if callable(kept) else kept
        except Exception as e:  # the message must not turn into a traceback
            message = f"(could not say what is kept: {e})"
        _say("interrupted", message)
        sys.exit(EXIT_INTERRUPTED)
    except UsageError as e:
        _say("error", str(e))
        sys.exit(EXIT_USAGE)
    except Exception as e:
        if isinstance(e, ModelNotAvailable):
            _say("error", str(e))
            sys.exit(EXIT_USAGE)
        raise


def script(kept: str | Callable[[Any], str] = "nothing is kept"):
    """Decorator for a script's Hydra main (placed under ``@hydra.main``, which unwraps it to find
    the configs): runs it in :func:`stage`; ``kept`` is a string or a function of the config."""
    def wrap(fn):
        @functools.wraps(fn)
        def run(cfg):
            with stage(cfg, (lambda: kept(cfg)) if callable(kept) else kept):
                return fn(cfg)

        return run

    return wrap


def checkpoints_kept(folder: Any, every: str, what: str) -> str:
    """The Ctrl-C line of a Trainer run: the newest complete checkpoint in ``folder`` and that the
    same command resumes from it, or that none was written yet (one every ``every``)."""
    last = last_complete_checkpoint(str(folder))
    if last is None:
        return f"no checkpoint written yet in {folder} (one every {every}); the same command starts {what} afresh"
    return f"{last} is kept; the same command resumes {what} from it"
