"""The Ray Data engine of the predict stage (``infer.engine=ray``): the same records as the local
engine, predicted by a pool of workers on this machine or on an existing Ray cluster.

Install it with ``pip install -e ".[ray]"``; running it on a cluster is described in docs/ray.md.

The pipeline::

    driver: iter_inputs(infer.input) -> tasks (a file, or a range of lines of a large JSONL file)
    ray.data.from_items(tasks).map_batches(PredictWorker, compute=ActorPoolStrategy(size=infer.ray.workers))
        worker: corpus.read_file -> batch.cut_pieces -> batch.predict_pieces -> one row per document
    driver: rows in input order (preserve_order) -> UniqueIds / done ids -> RunOutput.record / .error

Every worker loads its own :class:`~zh_policy_ner.decoding.inference.Predictor` once (``infer.model_dir``
with the driver's settings, its backend and precision pinned to the driver's so that the manifest
tells the truth) and reads and predicts with the very functions of the local engine, so the records
are the local engine's by construction: the same lines in the same order, the same errors.

Resume: the ids that :func:`~zh_policy_ner.prediction.batch.pending` would skip are found before anything is
predicted, and only the documents still to do are sent to the workers. Where every input is a text
or HTML file and no two share a document id, the ids come from the file names; otherwise a cheap
first pass over the inputs (read, decode, parse; no model) lists every document's id, in reading
order, through the same :class:`~zh_policy_ner.reading.corpus.UniqueIds` as the local engine.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..common.cli import UsageError, set_quiet
from ..decoding.inference import Predictor, predictor_settings
from ..labelling.annotations import Span
from ..reading.corpus import HTML_SUFFIXES, JSONL_SUFFIXES, TEXT_SUFFIXES, DocError, RawDoc, _doc_id, iter_inputs, read_file
from .batch import Piece, Pieces, PredictSummary, RunOutput, cut_pieces, pending, predict_pieces

log = logging.getLogger(__name__)

RAY_MISSING = 'infer.engine=ray needs Ray: pip install -e ".[ray]"'
ROWS_PER_YIELD = 64  # rows a worker hands back at a time (memory stays flat on huge JSONL files)
# passed to the workers of an existing cluster (a local Ray inherits the driver's environment)
WORKER_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "TOKENIZERS_PARALLELISM", "PROJECT_ROOT",
              "ZH_POLICY_NER_QUIET")


@dataclass(frozen=True)
class RaySettings:
    """``infer.ray``: where Ray runs and how the work is cut."""

    address: str | None = None
    workers: int = 2
    cpus_per_worker: float = 1
    gpus_per_worker: float = 0
    batch_files: int = 64
    split_lines: int = 10_000

    @classmethod
    def from_cfg(cls, cfg: Any) -> "RaySettings":
        block = cfg.infer.get("ray") or {}
        get = block.get
        s = cls(address=get("address") or None, workers=int(get("workers", cls.workers)),
                cpus_per_worker=float(get("cpus_per_worker", cls.cpus_per_worker)),
                gpus_per_worker=float(get("gpus_per_worker", cls.gpus_per_worker) or 0),
                batch_files=int(get("batch_files", cls.batch_files)),
                split_lines=int(get("split_lines", cls.split_lines) or 0))
        if s.workers < 1 or s.cpus_per_worker <= 0 or s.batch_files < 1 or s.gpus_per_worker < 0:
            raise UsageError(f"infer.ray: workers={s.workers}, batch_files={s.batch_files} and "
                             f"cpus_per_worker={s.cpus_per_worker} must be positive, gpus_per_worker >= 0")
        return s

    @property
    def threads(self) -> int:
        return max(1, int(self.cpus_per_worker))


# --------------------------------------------------------------------------- the tasks
@dataclass(frozen=True)
class Task:
    """One unit of work: input ``idx`` (its place in :func:`~zh_policy_ner.reading.corpus.iter_inputs`),
    the documents ``lo`` <= k < ``hi`` of ``path`` (k counts what :func:`~zh_policy_ner.reading.corpus.read_file`
    yields; ``hi=-1``: to the end), about ``size`` documents, and, when resuming, ``todo``: the
    documents still to do, k -> id."""

    idx: int
    path: str
    lo: int = 0
    hi: int = -1
    size: int = 1
    todo: dict[int, str] | None = None

    def as_json(self) -> list:
        todo = None if self.todo is None else {str(k): v for k, v in self.todo.items()}
        return [self.idx, self.path, self.lo, self.hi, todo]


def groups(tasks: list[Task], docs: int) -> list[dict[str, str]]:
    """Consecutive tasks in groups of about ``docs`` documents, one Ray row each: a worker predicts
    a group in one stream, so what shares a batch depends on the inputs and ``infer.ray.batch_files``
    alone, never on how Ray cut its blocks or how many workers there are (64 one-piece documents: the
    local engine's batches)."""
    out: list[dict[str, str]] = []
    group: list[list] = []
    n = 0
    for t in tasks:
        group.append(t.as_json())
        n += len(t.todo) if t.todo is not None else t.size
        if n >= docs:
            out.append({"tasks": json.dumps(group, ensure_ascii=False)})
            group, n = [], 0
    if group:
        out.append({"tasks": json.dumps(group, ensure_ascii=False)})
    return out


def count_lines(path: Path) -> int:
    """Line ends in ``path`` (an upper bound of the records of a JSONL file), read in blocks."""
    n = 0
    with path.open("rb") as f:
        while block := f.read(1 << 24):
            n += block.count(b"\n")
    return n


@dataclass(frozen=True)
class PlacedError(DocError):
    """An input error with its place in reading order (input ``idx``, document ``k``)."""

    idx: int = 0
    k: int = 0


def list_tasks(root: Path, exclude: Iterable[str | Path], split_lines: int) -> tuple[list[Task], list[PlacedError]]:
    """The tasks of ``root``'s inputs in reading order, and what :func:`iter_inputs` refuses. A
    JSONL file of more than ``split_lines`` lines becomes several tasks of as many lines each (the
    last one open-ended, so that no record is lost however the lines are counted)."""
    tasks: list[Task] = []
    refused: list[PlacedError] = []
    for idx, item in enumerate(iter_inputs(root, exclude)):
        if isinstance(item, DocError):
            refused.append(PlacedError(item.source, item.error, idx, 0))
            continue
        n = 0
        if split_lines > 0 and item.suffix.lower() in JSONL_SUFFIXES:
            try:
                n = count_lines(item)
            except OSError:
                n = 0  # read_file reports it
        if n > split_lines > 0:
            starts = list(range(0, n, split_lines))
            tasks += [Task(idx, str(item), lo, hi, split_lines) for lo, hi in zip(starts, [*starts[1:], -1])]
        else:
            tasks.append(Task(idx, str(item), size=max(n, 1)))
    return tasks, refused


# --------------------------------------------------------------------------- the workers
@contextlib.contextmanager
def in_dir(cwd: str | None) -> Iterator[None]:
    """Run in the driver's working directory where this node has it (relative inputs, sources and
    error messages then read as on the driver)."""
    old = os.getcwd()
    if cwd and os.path.isdir(cwd):
        os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(old)


def _task_docs(batch: dict[str, Any], root: str, on_decode_error: str, stream_bytes: int | None
               ) -> Iterator[tuple[int, int, Any, str | None]]:
    """(idx, k, RawDoc | StreamDoc | DocError, id or None) for the documents of a batch of groups of
    tasks, in order; with a ``todo`` only those it names, under the id it gives."""
    for group in batch["tasks"]:
        for idx, path, lo, hi, todo in json.loads(str(group)):
            todo = {int(k): v for k, v in todo.items()} if todo is not None else None
            if todo is not None and not todo:
                continue
            last = max(todo) if todo else None
            for k, doc in enumerate(read_file(Path(path), Path(root), on_decode_error, stream_bytes)):
                if k < lo:
                    continue
                if (hi >= 0 and k >= hi) or (last is not None and k > last):
                    break
                if todo is None:
                    yield idx, k, doc, None
                elif k in todo:
                    yield idx, k, doc, todo[k]


class _Rows:
    """Columns of the rows a worker returns."""

    COLUMNS = ("idx", "k", "kind", "doc_id", "source", "spans", "warnings", "error", "chars")

    def __init__(self) -> None:
        self.cols: dict[str, list] = {c: [] for c in self.COLUMNS}

    def add(self, idx: int, k: int, kind: str, doc_id: str = "", source: str = "", spans: str = "[]",
            warnings: Iterable[str] = (), error: str = "", chars: int = 0) -> None:
        for c, v in zip(self.COLUMNS, (idx, k, kind, doc_id, source, spans, json.dumps(list(warnings), ensure_ascii=False),
                                       error, chars)):
            self.cols[c].append(v)

    def __len__(self) -> int:
        return len(self.cols["idx"])

    def take(self) -> dict[str, list]:
        cols, self.cols = self.cols, {c: [] for c in self.COLUMNS}
        return cols


@dataclass(eq=False)
class _Doc:
    """A document on a worker: where it is in the input, its id, what it is (a DocError too)."""

    idx: int
    k: int
    doc: Any
    doc_id: str
    spans: list | None = None
    chars: int = 0


def read_ids(batch: dict[str, Any], root: str, on_decode_error: str, stream_bytes: int | None, cwd: str | None
             ) -> dict[str, list]:
    """The first pass of a resumed run (no model): every document's raw id, or its error, in order."""
    rows = _Rows()
    with in_dir(cwd):
        for idx, k, doc, _ in _task_docs(batch, root, on_decode_error, stream_bytes):
            if isinstance(doc, DocError):
                rows.add(idx, k, "input_error", source=doc.source, error=doc.error)
            else:
                rows.add(idx, k, "doc", doc.doc_id, doc.source)
    return rows.take()


class PredictWorker:
    """A Ray Data actor: loads the predictor once, then turns batches of tasks into rows, one per
    document (``kind``: ``doc``; ``error``: a document that failed while read or was too long, its id
    still taken; ``input_error``: an input that gave no document), in input order."""

    def __init__(self, model_dir: str, settings: dict[str, Any], how: Pieces, root: str, on_decode_error: str,
                 stream_bytes: int | None, threads: int, expect_backend: str, cwd: str | None = None,
                 quiet: bool = True, docs_per_batch: int = 64, batch_chars: int = 200_000):
        import torch

        if cwd and os.path.isdir(cwd):
            os.chdir(cwd)  # an actor's own process
        set_quiet(quiet)
        torch.set_num_threads(threads)
        self.predictor = Predictor.from_pretrained(model_dir, **settings)
        backend = f"{self.predictor.precision} on {self.predictor.device.type}"
        if backend != expect_backend:
            raise RuntimeError(f"a Ray worker predicts with {backend}, the driver with {expect_backend}: the records "
                               f"would not match the manifest (see infer.ray.gpus_per_worker, infer.precision)")
        self.how, self.root, self.on_decode_error, self.stream_bytes = how, root, on_decode_error, stream_bytes
        self.docs_per_batch, self.batch_chars = docs_per_batch, batch_chars  # the local engine's batches

    def _pieces(self, docs: Iterable[tuple[int, int, Any, str | None]]) -> Iterator[Piece]:
        how = self.how
        for idx, k, doc, doc_id in docs:
            item = _Doc(idx, k, doc, doc_id or getattr(doc, "doc_id", ""), [])
            if isinstance(doc, DocError):
                yield Piece(item, error=doc.error, first=True, last=True)  # type: ignore[arg-type]
            else:  # a document over infer.max_doc_chars comes back as an error piece
                for piece in cut_pieces(doc, how):
                    piece.doc = item  # type: ignore[assignment]
                    yield piece

    def __call__(self, batch: dict[str, Any]) -> Iterator[dict[str, list]]:
        rows = _Rows()
        docs = _task_docs(batch, self.root, self.on_decode_error, self.stream_bytes)
        for piece, spans in predict_pieces(self.predictor, self._pieces(docs), self.docs_per_batch, self.batch_chars):
            item: _Doc = piece.doc  # type: ignore[assignment]
            doc = item.doc
            if piece.error is not None:
                kind = "input_error" if isinstance(doc, DocError) else "error"
                rows.add(item.idx, item.k, kind, item.doc_id, doc.source, error=piece.error)
            else:
                item.spans += spans  # type: ignore[operator]
                item.chars += piece.hi - piece.lo
                if not piece.last:
                    continue
                spans_json = json.dumps([s.to_dict() for s in item.spans], ensure_ascii=False)  # type: ignore[union-attr]
                rows.add(item.idx, item.k, "doc", item.doc_id, doc.source, spans_json, doc.warnings, chars=item.chars)
            if len(rows) >= ROWS_PER_YIELD:
                yield rows.take()
        if len(rows):
            yield rows.take()


# --------------------------------------------------------------------------- the driver
@dataclass(frozen=True)
class _Row(RawDoc):
    """A worker's row on the driver, as a document that :func:`~zh_policy_ner.prediction.batch.pending` can
    rename or skip (``text`` stays empty: it was predicted on the worker)."""

    idx: int = 0
    k: int = 0
    spans: str = "[]"
    error: str = ""
    chars: int = 0


class WireSpan(Span):
    """A span as a worker wrote it (:meth:`Span.to_dict`, through JSON), written back as that very
    dict: the driver's share of the work stays small (``dataclasses.asdict`` for every span would cap
    it at about 5,000 records a second)."""

    def __init__(self, d: dict[str, Any]):
        super().__init__(**d)
        object.__setattr__(self, "_dict", d)

    def to_dict(self) -> dict:
        return self._dict  # type: ignore[attr-defined]


def _row_item(row: dict[str, Any]) -> _Row | PlacedError:
    idx, k = int(row["idx"]), int(row["k"])
    if row["kind"] == "input_error":
        return PlacedError(row["source"], row["error"], idx, k)
    return _Row(row["doc_id"], row["source"], "", tuple(json.loads(row["warnings"])), idx=idx, k=k,
                spans=row["spans"], error=row["error"] if row["kind"] == "error" else "", chars=int(row["chars"]))


def _in_order(rows: Iterable[dict[str, Any]], errors: Iterable[PlacedError]) -> Iterator[_Row | PlacedError]:
    """The rows as documents, with ``errors`` (known on the driver) put back at their places."""
    known = iter(sorted(errors, key=lambda e: (e.idx, e.k)))
    nxt = next(known, None)
    last = (-1, -1)
    for row in rows:
        item = _row_item(row)
        at = (item.idx, item.k)
        if at <= last:
            raise RuntimeError(f"Ray returned the documents out of order ({at} after {last}): preserve_order is off?")
        last = at
        while nxt is not None and (nxt.idx, nxt.k) < at:
            yield nxt
            nxt = next(known, None)
        yield item
    while nxt is not None:
        yield nxt
        nxt = next(known, None)


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise UsageError(RAY_MISSING) from None
    return ray


@contextlib.contextmanager
def ray_session(ray: Any, settings: RaySettings, quiet: bool = True) -> Iterator[bool]:
    """Ray, started here (``infer.ray.address``; null: a local one) and shut down after, unless it
    was already initialised (then used as it is). Yields whether it was started here."""
    if ray.is_initialized():
        yield False
        return
    kwargs: dict[str, Any] = dict(address=settings.address, include_dashboard=False, log_to_driver=not quiet,
                                  logging_level=logging.WARNING if quiet else logging.INFO)
    if settings.address:
        env = {k: os.environ[k] for k in WORKER_ENV if k in os.environ}
        if env:
            kwargs["runtime_env"] = {"env_vars": env}
    ray.init(**kwargs)
    try:
        yield True
    finally:
        ray.shutdown()


@contextlib.contextmanager
def _data_context(quiet: bool) -> Iterator[None]:
    """Ray Data in input order, without its own progress bars and (quiet) its progress logs."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    old = (ctx.execution_options.preserve_order, ctx.enable_progress_bars)
    data_log = logging.getLogger("ray.data")
    old_level = data_log.level
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    if quiet:
        data_log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        ctx.execution_options.preserve_order, ctx.enable_progress_bars = old
        data_log.setLevel(old_level)


def _check_resources(ray: Any, s: RaySettings, started_here: bool) -> None:
    have = ray.cluster_resources()
    for what, need in (("CPU", s.workers * s.cpus_per_worker), ("GPU", s.workers * s.gpus_per_worker)):
        if need > have.get(what, 0):
            message = (f"infer.ray.workers={s.workers} need {need:g} {what}s "
                       f"(infer.ray.{what.lower()}s_per_worker), the Ray cluster has {have.get(what, 0):g}")
            if started_here and not s.address:
                raise UsageError(message + ": lower them")
            log.warning("%s: the pool waits until the cluster grows", message)


def _plan_from_names(tasks: list[Task], root: Path, run: RunOutput) -> list[Task] | None:
    """The tasks still to do when every input is a text or HTML file whose id (from its name) no other
    input shares: no id can then be renamed, so a done id is a done file; None otherwise."""
    suffixes = TEXT_SUFFIXES + HTML_SUFFIXES
    if any(Path(t.path).suffix.lower() not in suffixes for t in tasks):
        return None
    ids = [_doc_id(Path(t.path), root) for t in tasks]
    if len(set(ids)) < len(ids):
        return None
    todo = [Task(t.idx, t.path, size=1, todo={0: i}) for t, i in zip(tasks, ids) if i not in run.done]
    run.skipped = len(tasks) - len(todo)
    return todo


def _plan_from_ids(ray: Any, tasks: list[Task], refused: list[PlacedError], run: RunOutput, kwargs: dict[str, Any],
                   s: RaySettings) -> tuple[list[Task], list[PlacedError]]:
    """The tasks still to do from a first pass that reads every document's id (no model): the ids go
    through :func:`~zh_policy_ner.prediction.batch.pending` in reading order, as in the local engine. The
    input errors are returned with their places, to be logged among the records (no worker reads
    them again)."""
    ds = ray.data.from_items(groups(tasks, max(s.batch_files, 256))).map_batches(
        read_ids, fn_kwargs=kwargs, batch_size=1, num_cpus=1, batch_format="numpy")
    todo: dict[int, dict[int, str]] = {}
    errors: list[PlacedError] = []
    for item in pending(_in_order(ds.iter_rows(), refused), run):
        if isinstance(item, _Row):
            todo.setdefault(item.idx, {})[item.k] = item.doc_id
        else:
            errors.append(item)  # type: ignore[arg-type]
    planned = []
    for t in tasks:
        mine = {k: v for k, v in todo.get(t.idx, {}).items() if k >= t.lo and (t.hi < 0 or k < t.hi)}
        if mine:
            planned.append(Task(t.idx, t.path, t.lo, t.hi, t.size, mine))
    return planned, errors


def predict_ray(cfg: Any, predictor: Any, run: RunOutput, how: Pieces) -> PredictSummary:
    """Predict ``cfg.infer.input`` into ``run`` (an entered :class:`~zh_policy_ner.prediction.batch.RunOutput`)
    with a pool of Ray workers (``cfg.infer.ray``); ``predictor`` is the driver's, whose backend and
    precision the workers must match."""
    ray = _import_ray()
    from tqdm import tqdm

    s = RaySettings.from_cfg(cfg)
    quiet = bool(cfg.get("quiet", True))
    on_gpu = predictor.device.type != "cpu"
    if on_gpu != (s.gpus_per_worker > 0):
        raise UsageError(f"the driver predicts on {predictor.device.type} but infer.ray.gpus_per_worker="
                         f"{s.gpus_per_worker:g}: the records would not match the manifest; "
                         + ("set infer.ray.gpus_per_worker=1 or hide the GPU (CUDA_VISIBLE_DEVICES=)" if on_gpu
                            else "set infer.ray.gpus_per_worker=0 or run the driver on a GPU machine"))
    t0 = time.time()
    root = Path(cfg.infer.input)
    on_decode_error = cfg.infer.get("on_decode_error", "replace")
    stream_bytes = cfg.infer.get("stream_bytes", 4 << 20)
    tasks, refused = list_tasks(root, [*run.paths.values(), run.output], s.split_lines)
    cwd = os.getcwd()
    read_kwargs = dict(root=str(root), on_decode_error=on_decode_error, stream_bytes=stream_bytes)

    settings = dict(predictor_settings(cfg))
    if predictor.runner is None:  # the workers resolve nothing on their own: the driver's backend, pinned
        settings.update(backend="torch", precision=predictor.precision)
    else:
        settings.update(backend="onnx")
    settings["num_threads"] = cfg.infer.num_threads or s.threads
    if not on_gpu:
        settings["device"] = "cpu"
    model_dir = str(cfg.infer.model_dir)
    if Path(model_dir).expanduser().is_dir():
        model_dir = str(Path(model_dir).expanduser().resolve())

    n_docs = n_err = n_chars = 0
    resuming = bool(run.done)
    session = ray_session(ray, s, quiet) if tasks else contextlib.nullcontext(False)  # nothing to read: no Ray
    with session as started_here, _data_context(quiet), tqdm(desc="predict (ray)", unit="doc") as bar:
        if resuming:
            todo = _plan_from_names(tasks, root, run)
            errors = refused
            if todo is None:
                todo, errors = _plan_from_ids(ray, tasks, refused, run, dict(read_kwargs, cwd=cwd), s)
        else:
            todo, errors = tasks, refused
        rows: Iterable[dict[str, Any]] = ()
        if todo:
            _check_resources(ray, s, started_here)
            worker_kwargs = dict(model_dir=model_dir, settings=settings, how=how, threads=settings["num_threads"],
                                 expect_backend=f"{predictor.precision} on {predictor.device.type}", cwd=cwd,
                                 quiet=quiet, docs_per_batch=int(cfg.infer.get("docs_per_batch", 64)),
                                 batch_chars=int(cfg.infer.get("batch_chars", 200_000)), **read_kwargs)
            work = groups(todo, s.batch_files)
            ds = ray.data.from_items(work).map_batches(  # no more workers than worker calls: each loads the model
                PredictWorker, fn_constructor_kwargs=worker_kwargs, batch_size=1, batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=min(s.workers, len(work))), num_cpus=s.cpus_per_worker,
                **({"num_gpus": s.gpus_per_worker} if s.gpus_per_worker else {}))
            rows = ds.iter_rows()
        items: Iterable[Any] = _in_order(rows, errors)
        if not resuming:
            items = pending(items, run)  # ids made unique in reading order, as in the local engine
        for item in items:
            if isinstance(item, DocError) or item.error:
                n_err += 1
                run.error(item.source, item.error)
                continue
            for warning in item.warnings:
                log.warning("%s: %s", item.source, warning)
            run.record(item.doc_id, item.source, [WireSpan(d) for d in json.loads(item.spans)], item.warnings)
            n_docs += 1
            n_chars += item.chars
            bar.update(1)
    return PredictSummary(run.output, n_docs, run.skipped, n_err, n_chars, time.time() - t0)
