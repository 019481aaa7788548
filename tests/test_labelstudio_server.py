"""Round trip through a real, running Label Studio server (project issue 11, item 2).

Model suggestions go in with ``export_predictions`` (tasks with ``predictions``), two tasks are
annotated through the HTTP API (one suggestion set accepted as is, one corrected: a boundary fixed,
a false span deleted, a missed span added), the third is left alone; the project is exported as
full JSON and JSON_MIN and read back with ``import_corrected(..., anchors=[seeds])``.

Needs a ``label-studio`` executable, looked for in ``$LABEL_STUDIO_BIN``, then ``.venv-ls/bin``,
then ``PATH``; skipped without one. Offline: the server listens on 127.0.0.1 only and its
start-up calls out (PyPI version check, Sentry, analytics) are switched off. Plain ``urllib``,
no SDK. Run it alone with ``python -m pytest -m labelstudio --durations=0 tests/test_labelstudio_server.py``.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from zh_policy_ner.labelling.annotations import load_annotations, sha256_bytes
from zh_policy_ner.labelling.exchange import export_predictions, import_corrected

ROOT = Path(__file__).resolve().parents[1]
SEEDS = ROOT / "seeds"
LABEL_STUDIO_VERSION = "1.23.2"   # the version this test was written against (and .ci/run installs)
START_TIMEOUT_S = 300             # a fresh data folder runs all migrations first (about a minute on 2 cores)

# Three reports, copied from outside the repository as a prediction run would see them; --anchor seeds
# maps them back to the repository copies by sha256.
TRAD, SIMP, LEFT = "002_ea77f5f8472cfacb", "000_3ef2d39555261642", "004_383dab57bb4e398a"
SUGGESTED = {
    # traditional, with pinyin glosses: 市委書(shū)記、…組長(zhǎng)王魯明…習(xí)近平總書(shū)記在湖北武漢
    TRAD: [(159, 161, "LOC", 0.93), (177, 186, "PER", 0.38), (227, 230, "PER", 0.97), (304, 310, "PER", 0.41)],
    SIMP: [(4, 6, "LOC", 0.95), (82, 85, "PER", 0.9), (290, 298, "POLICY", 0.66)],
    LEFT: [(178, 180, "PER", 0.88), (368, 372, "POLICY", 0.72)],
}
# What the annotator makes of TRAD: 威海 and 王魯明 kept, 市委書(shū)記 (a title) deleted,
# 習(xí)近 widened to 習(xí)近平 (the gloss stays inside the name), 湖北 added.
TRAD_GOLD = [(159, 161, "LOC", "威海"), (227, 230, "PER", "王魯明"), (304, 311, "PER", "習(xí)近平"), (320, 322, "LOC", "湖北")]
SIMP_GOLD = [(4, 6, "LOC", "大连"), (82, 85, "PER", "宋莹莹"), (290, 298, "POLICY", "社会信用体系建设")]
LEFT_SUGGESTED = [(178, 180, "PER", "陈烁"), (368, 372, "POLICY", "核酸检测")]


def label_studio_bin() -> tuple[str | None, str]:
    """The ``label-studio`` executable ($LABEL_STUDIO_BIN, .venv-ls, PATH) or None, and why not."""
    env = os.environ.get("LABEL_STUDIO_BIN")
    if env:
        ok = Path(env).is_file() and os.access(env, os.X_OK)
        return (env, "") if ok else (None, f"LABEL_STUDIO_BIN={env} is not an executable file (did its pip install fail?)")
    venv = ROOT / ".venv-ls" / "bin" / "label-studio"
    if venv.is_file() and os.access(venv, os.X_OK):
        return str(venv), ""
    found = shutil.which("label-studio")
    return (found, "") if found else (None, "no label-studio executable ($LABEL_STUDIO_BIN, .venv-ls/bin, PATH); "
                                            f"python -m venv .venv-ls && .venv-ls/bin/pip install label-studio=={LABEL_STUDIO_VERSION}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))   # 127.0.0.1, never through a proxy


class LabelStudio:
    """A minimal client of the documented HTTP API."""

    def __init__(self, url: str):
        self.url = url
        self.auth = ""
        self.legacy = ""

    def request(self, method: str, path: str, body=None, raw: bool = False, auth: str | None = None):
        data = body if isinstance(body, bytes) or body is None else json.dumps(body, ensure_ascii=False).encode("utf-8")
        headers = {"Content-Type": "application/json"} if data is not None else {}
        if auth if auth is not None else self.auth:
            headers["Authorization"] = auth if auth is not None else self.auth
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with _NO_PROXY.open(req, timeout=120) as r:
                out = r.read()
        except urllib.error.HTTPError as e:
            raise AssertionError(f"{method} {path}: HTTP {e.code}: {e.read()[:2000].decode('utf-8', 'replace')}") from None
        return out if raw else (json.loads(out) if out else None)

    def status(self, path: str, auth: str) -> int:
        try:
            with _NO_PROXY.open(urllib.request.Request(self.url + path, headers={"Authorization": auth}), timeout=30) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code


@pytest.fixture()
def server(tmp_path):
    """``label-studio start`` on a free 127.0.0.1 port with a throwaway data folder, a user and a
    legacy token made on the command line; stopped (and its process group killed) afterwards."""
    exe, why = label_studio_bin()
    if exe is None:
        pytest.skip(why)
    data, port = tmp_path / "ls-data", free_port()
    token = secrets.token_hex(20)
    env = {**os.environ,
           "LABEL_STUDIO_BASE_DATA_DIR": str(data),
           "LATEST_VERSION_CHECK": "false",                         # no PyPI query at start-up
           "COLLECT_ANALYTICS": "false",                            # no usage analytics
           "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": "",             # no error reports to sentry.io
           "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",     # nobody else signs up
           "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    for k in ("LABEL_STUDIO_USERNAME", "LABEL_STUDIO_PASSWORD", "LABEL_STUDIO_USER_TOKEN", "DJANGO_DB", "DATABASE_NAME"):
        env.pop(k, None)
    cmd = [exe, "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port), "--data-dir", str(data),
           "--username", "annotator@example.com", "--password", secrets.token_hex(8), "--user-token", token,
           "--enable-legacy-api-token"]   # org-level switch: legacy tokens are off by default since 1.17
    log = tmp_path / "label-studio.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, start_new_session=True)
    ls = LabelStudio(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"label-studio exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
            try:
                with _NO_PROXY.open(ls.url + "/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"label-studio did not answer on {ls.url} in {START_TIMEOUT_S}s:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(1)
        ls.legacy = f"Token {token}"
        yield ls
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _region(rid: str, text: str, s: int, e: int, label: str) -> dict:
    return {"id": rid, "from_name": "label", "to_name": "text", "type": "labels",
            "value": {"start": s, "end": e, "text": text[s:e], "labels": [label]}}


def _spans(doc) -> list[tuple]:
    return [(s.start, s.end, s.label, s.text) for s in doc.spans]


@pytest.mark.labelstudio
def test_round_trip_through_label_studio(server, tmp_path):
    ls = server
    raw = {name: (SEEDS / f"{name}.txt").read_bytes() for name in SUGGESTED}
    text = {name: b.decode("utf-8") for name, b in raw.items()}
    assert text[TRAD][177:186] == "市委書(shū)記" and text[TRAD][304:310] == "習(xí)近"

    # --- tokens: the legacy token from --user-token bootstraps a personal access token (a JWT refresh
    # token), which buys 5-minute access tokens; the PAT itself is no bearer token.
    assert ls.request("GET", "/api/jwt/settings", auth=ls.legacy) == {"api_tokens_enabled": True, "legacy_api_tokens_enabled": True}
    pat = ls.request("POST", "/api/token/", auth=ls.legacy)["token"]
    access = ls.request("POST", "/api/token/refresh/", {"refresh": pat}, auth="")["access"]
    assert ls.status("/api/current-user/whoami", f"Bearer {access}") == 200
    assert ls.status("/api/current-user/whoami", f"Bearer {pat}") == 401
    assert ls.status("/api/projects", "Token not-a-token") == 401
    ls.auth = f"Bearer {access}"
    assert ls.request("GET", "/api/current-user/whoami")["email"] == "annotator@example.com"

    # --- predictions (as predict.py writes them) -> Label Studio tasks; the reports lie outside the repo
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    records = []
    for name, spans in SUGGESTED.items():
        (incoming / f"{name[:3]}.txt").write_bytes(raw[name])
        records.append({"doc_id": name[:3], "source": str(incoming / f"{name[:3]}.txt"),
                        "spans": [{"start": s, "end": e, "label": lab, "text": text[name][s:e], "score": sc} for s, e, lab, sc in spans]})
    preds = tmp_path / "predictions.jsonl"
    preds.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    tasks_file = export_predictions(preds, "labelstudio", tmp_path / "ls" / "tasks.json")
    config = subprocess.run([sys.executable, "-m", "zh_policy_ner.labelling.exchange", "config"], capture_output=True, text=True,
                            check=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")}).stdout
    assert config == (tmp_path / "ls" / "labeling_config.xml").read_text(encoding="utf-8")

    project = ls.request("POST", "/api/projects", {"title": "zh-policy-ner round trip", "label_config": config})
    pid = project["id"]
    # the one-command upload: POST the tasks file as it is to /api/projects/<id>/import
    imported = ls.request("POST", f"/api/projects/{pid}/import", tasks_file.read_bytes())
    assert imported["task_count"] == 3 and imported["prediction_count"] == 3
    tasks = {t["data"]["doc_id"]: t for t in ls.request("GET", f"/api/tasks?project={pid}&page_size=100")["tasks"]}
    assert sorted(tasks) == ["000", "002", "004"]
    for name in SUGGESTED:
        assert tasks[name[:3]]["data"]["text"] == text[name]        # the server keeps the text byte for byte

    # --- annotate through the API: SIMP accepted as suggested, TRAD corrected, LEFT untouched
    simp = ls.request("GET", f"/api/tasks/{tasks['000']['id']}")
    ls.request("POST", f"/api/tasks/{simp['id']}/annotations", {"result": simp["predictions"][0]["result"], "lead_time": 4.0})
    trad = [_region(f"t{i}", text[TRAD], s, e, lab) for i, (s, e, lab, _) in enumerate(TRAD_GOLD)]
    ls.request("POST", f"/api/tasks/{tasks['002']['id']}/annotations", {"result": trad, "lead_time": 31.5})

    # --- export: a snapshot with the predictions' bodies (full JSON), and the quick export (JSON_MIN, JSON)
    snap = ls.request("POST", f"/api/projects/{pid}/exports", {"serialization_options": {"predictions": {"only_id": False}}})
    for _ in range(120):
        if ls.request("GET", f"/api/projects/{pid}/exports/{snap['id']}")["status"] == "completed":
            break
        time.sleep(0.5)
    full = tmp_path / "export_full.json"
    full.write_bytes(ls.request("GET", f"/api/projects/{pid}/exports/{snap['id']}/download?exportType=JSON", raw=True))
    json_min = tmp_path / "export_min.json"
    json_min.write_bytes(ls.request("GET", f"/api/projects/{pid}/export?exportType=JSON_MIN&download_all_tasks=true", raw=True))
    quick = tmp_path / "export_quick.json"
    quick.write_bytes(ls.request("GET", f"/api/projects/{pid}/export?exportType=JSON&download_all_tasks=true", raw=True))
    assert all(isinstance(p, dict) for t in json.loads(full.read_text(encoding="utf-8")) for p in t["predictions"])
    assert all(isinstance(p, int) for t in json.loads(quick.read_text(encoding="utf-8")) for p in t["predictions"])
    assert {r["id"]: r["annotation_id"] for r in json.loads(json_min.read_text(encoding="utf-8"))}[tasks["004"]["id"]] is None

    # --- import each export, anchored to the repository's copies
    gold = {"002": TRAD_GOLD, "000": SIMP_GOLD}
    source = {"002": f"seeds/{TRAD}.txt", "000": f"seeds/{SIMP}.txt", "004": f"seeds/{LEFT}.txt"}
    for export, has_predictions in ((full, True), (json_min, False), (quick, False)):
        out = tmp_path / "annotations" / f"{export.stem}.jsonl"
        rep = import_corrected(export, "labelstudio", out, root=ROOT, anchors=[SEEDS])
        docs = {d.doc_id: d for d in rep.docs}
        assert sorted(docs) == ["000", "002"], export.name               # the untouched task is no gold
        assert len(rep.skipped) == 1 and "(004)" in rep.skipped[0] and "no human annotation" in rep.skipped[0]
        for doc_id, want in gold.items():
            assert _spans(docs[doc_id]) == want, (export.name, doc_id)
            assert docs[doc_id].source == source[doc_id]
        assert [(s, e, lab, text[TRAD][s:e]) for s, e, lab, _ in TRAD_GOLD] == TRAD_GOLD   # offsets into the raw file
        loaded, errors = load_annotations(out, root=ROOT)
        assert errors == [] and {d.text_sha256 for d in loaded} == {sha256_bytes(raw[TRAD]), sha256_bytes(raw[SIMP])}
        assert not rep.problems and not (tmp_path / "annotations" / "texts").exists()
        cost = {"accepted": 5, "changed": 1, "deleted": 1, "added": 1} if has_predictions else {}
        assert {k: v for k, v in rep.cost.items() if v} == cost, export.name

        accepted = import_corrected(export, "labelstudio", out.with_name(f"{export.stem}-acc.jsonl"), root=ROOT,
                                    anchors=[SEEDS], accept_predictions=True)
        acc = {d.doc_id: d for d in accepted.docs}
        if has_predictions:    # only the snapshot export carries the suggestions themselves
            assert sorted(acc) == ["000", "002", "004"] and accepted.from_predictions == 1 and not accepted.skipped
            assert _spans(acc["004"]) == LEFT_SUGGESTED and acc["004"].source == source["004"]
        else:                  # JSON_MIN has no predictions, the quick JSON export only their ids
            assert sorted(acc) == ["000", "002"] and accepted.from_predictions == 0 and len(accepted.skipped) == 1


def test_json_min_row_of_a_task_nobody_annotated_is_no_gold(tmp_path):
    """With ``download_all_tasks=true`` Label Studio 1.23.2 writes a task without annotations into
    JSON_MIN as a row whose ``annotation_id`` (and annotator, dates) are null: no human annotation."""
    text = (SEEDS / f"{LEFT}.txt").read_text(encoding="utf-8")
    rows = [{"text": text, "doc_id": "004", "source": "x.txt", "id": 3, "annotator": None, "annotation_id": None,
             "created_at": None, "updated_at": None, "lead_time": None},
            {"text": text, "doc_id": "004b", "source": "x.txt", "id": 4, "annotator": 1, "annotation_id": 7,
             "created_at": "2026-12-03T08:00:42Z", "updated_at": "2026-12-03T08:00:42Z", "lead_time": 3.0}]   # annotated, no region
    export = tmp_path / "min.json"
    export.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    for accept in (False, True):
        rep = import_corrected(export, "labelstudio", tmp_path / "a.jsonl", root=ROOT, anchors=[SEEDS], accept_predictions=accept)
        assert [(d.doc_id, d.spans, d.source) for d in rep.docs] == [("004b", [], f"seeds/{LEFT}.txt")]
        assert len(rep.skipped) == 1 and "(004)" in rep.skipped[0]
