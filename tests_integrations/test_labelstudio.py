"""A real Label Studio reads ProtoLabel's `labelstudio` export through ONE local files storage.

Run by `make test-integrations` only (`make test` collects tests/, not tests_integrations/):
it runs in its own environment, build/integrations-venv (label-studio, requests, pytest), and drives
ProtoLabel as a user would, with the main environment's `protolabel` (PROTOLABEL, default .venv/bin/protolabel).

A small project is made from generated shapes (`protolabel label --save-project`): its labeled folder lies
under Label Studio's document root, its examples outside it. Label Studio starts on 127.0.0.1 (a free port,
its data in a temporary folder, local files serving on, the document root set). For each way to export (the
default, as the window does it, and --document-root), the test creates a project with the exported labeling
config, adds the ONE storage the export names, imports the tasks, and checks that every task's label is the
one ProtoLabel exported for that image and that every image URL answers 200 through the server.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[1]
PROTOLABEL = Path(os.environ.get("PROTOLABEL", REPO / ".venv" / "bin" / "protolabel"))
LABEL_STUDIO = shutil.which("label-studio", path=str(Path(sys.executable).parent)) or shutil.which("label-studio")
USER, PASSWORD, TOKEN = "protolabel@example.com", "protolabel-test-password", "protolabel0123456789token"
START_TIMEOUT_S = 600  # the first start migrates a new database: minutes on a small machine
CLASSES = ("circle", "square", "triangle")


def run(*argv, **kw) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, **kw)
    assert result.returncode == 0, f"{argv[:3]} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def place(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("labelstudio").resolve()
    return {"tmp": tmp, "root": tmp / "root", "photos": tmp / "root" / "data" / "photos", "support": tmp / "support",
            "project": tmp / "project"}


class Server:
    def __init__(self, place: dict) -> None:
        assert LABEL_STUDIO, "label-studio is not installed here: run `make test-integrations`"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = place["tmp"] / "label-studio.log"
        place["root"].mkdir(parents=True)
        data = place["tmp"] / "label-studio-data"
        env = {**os.environ, "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
               "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(place["root"]), "LABEL_STUDIO_BASE_DATA_DIR": str(data),
               "LABEL_STUDIO_USERNAME": USER, "LABEL_STUDIO_PASSWORD": PASSWORD, "LABEL_STUDIO_USER_TOKEN": TOKEN,
               "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true", "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
               "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": ""}
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [LABEL_STUDIO, "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(self.port),
             "--data-dir", str(data), "--enable-legacy-api-token"],
            env=env, cwd=place["tmp"], stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Token {TOKEN}"

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"label-studio exited ({self.process.returncode}):\n{self.log_tail()}")
            try:
                if requests.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(2)
        pytest.fail(f"label-studio did not answer within {START_TIMEOUT_S} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-n:]

    def api(self, method: str, path: str, **kw):
        response = self.http.request(method, f"{self.url}{path}", timeout=120, **kw)
        assert response.ok, f"{method} {path}: {response.status_code} {response.text[:2000]}"
        return response.json() if response.content else None

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


@pytest.fixture(scope="module")
def server(place):
    """Label Studio, started first: it migrates its database while ProtoLabel labels the folder."""
    s = Server(place)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def labeled(server, place) -> dict:
    """A saved project (examples from place['support'], outside the document root) and the labels it holds,
    as {image sha256: label} from ProtoLabel's own JSON export (the same default filters)."""
    python = PROTOLABEL.parent / "python"
    run(python, "-c", "import sys; from pathlib import Path; from core.synthetic import write_tree; "
                      "write_tree(Path(sys.argv[1]), per_class=2, seed=1, classes=sys.argv[3:]); "
                      "write_tree(Path(sys.argv[2]), per_class=4, seed=2, classes=sys.argv[3:])",
        place["support"], place["photos"], *CLASSES, cwd=REPO)
    run(PROTOLABEL, "label", "--support", place["support"], "--query", place["photos"], "--device", "cpu",
        "--out", place["tmp"] / "labels.csv", "--save-project", place["project"])
    run(PROTOLABEL, "export", "labels", place["project"], "--format", "json", "--out", place["tmp"] / "labels.json")
    doc = json.loads((place["tmp"] / "labels.json").read_text(encoding="utf-8"))
    labels: dict[str, set[str]] = {}
    for entry in doc["labels"]:
        labels.setdefault(digest(Path(entry["path"]).read_bytes()), set()).add(entry["label"])
    examples = [e for e in doc["labels"] if e["source"] == "support"]
    assert examples and all(not Path(e["path"]).is_relative_to(place["root"]) for e in examples)
    return {"labels": labels, "count": len(doc["labels"])}


def task_label(task: dict) -> str:
    results = [a["result"] for a in task.get("annotations") or []] + [p["result"] for p in task.get("predictions") or []]
    assert len(results) == 1, f"task {task['id']}: {len(results)} annotations and predictions"
    [result] = results
    return result[0]["value"]["choices"][0]


@pytest.mark.parametrize("case", ["default", "document-root"])
def test_label_studio_shows_every_exported_label(server, labeled, place, case):
    root = place["root"]
    if case == "default":  # the window's export: no options; the name without .json gets it
        out, options, tasks_path = root / "data" / "ls" / "tasks", [], root / "data" / "ls" / "tasks.json"
    else:  # Label Studio's root given, the tasks beside the labeled folder: every image linked below the root
        out = tasks_path = root / "side-by-side.json"
        options = ["--document-root", root]
    result = run(PROTOLABEL, "export", "labels", place["project"], "--format", "labelstudio", "--out", out, *options)
    assert f"-> {tasks_path}" in result.stderr
    setup = json.loads(tasks_path.with_name(f"{tasks_path.stem}.local_storage.json").read_text(encoding="utf-8"))
    assert setup["environment"] == {"LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
                                    "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(root)}
    assert f"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={root}" in result.stderr
    assert setup["local_storage"]["path"] in result.stderr
    server.wait_ready()

    config = Path(setup["label_config"]).read_text(encoding="utf-8")
    project = server.api("POST", "/api/projects", json={"title": f"protolabel {case}", "label_config": config})
    server.api("POST", "/api/storages/localfiles", json={
        "project": project["id"], "title": "protolabel", "path": setup["local_storage"]["path"],
        "use_blob_urls": False})
    assert len(server.api("GET", f"/api/storages/localfiles?project={project['id']}")) == 1
    with open(tasks_path, "rb") as fh:
        imported = server.api("POST", f"/api/projects/{project['id']}/import",
                              files={"file": (tasks_path.name, fh, "application/json")})
    assert imported["task_count"] == labeled["count"], imported

    page = server.api("GET", f"/api/tasks?project={project['id']}&page_size={labeled['count'] + 10}&fields=all")
    tasks = page["tasks"] if isinstance(page, dict) else page
    assert len(tasks) == labeled["count"]
    for task in tasks:
        image = server.http.get(f"{server.url}{task['data']['image']}", timeout=60)
        assert image.status_code == 200, f"{task['data']['image']}: {image.status_code}"
        assert labeled["labels"].get(digest(image.content)) == {task_label(task)}, task["data"]["image"]
    print(f"{case}: {len(tasks)} tasks, every image served and labeled as exported "
          f"(label-studio {server.api('GET', '/api/version').get('release')})")
