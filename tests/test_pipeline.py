"""The kfp pipeline as compiled: not stale, and carrying the cluster settings that kfp's local runner ignores (GPU,
node selector, toleration, per-step Secrets, timeouts, loop parallelism, memory limits, queue labels, retries,
caching, the exit handler). The schedule command against a local stand-in for the KFP REST API that records every
request."""

from __future__ import annotations

import json
import re
import threading
from email.parser import BytesParser
from email.policy import default as email_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

pytest.importorskip("kfp")
pytest.importorskip("kfp.kubernetes")

from pipelines.compile import COMPILED, compile_pipeline  # noqa: E402
from pipelines.training import (  # noqa: E402
    DEFAULT_CPU_IMAGE,
    DEFAULT_TRAIN_IMAGE,
    GPU_TOLERATION,
    RESOURCES,
    RETRY,
    ClusterSettings,
)

STEPS = {"source-version-op", "fetch-op", "weights-op", "features-op", "plan-op", "train-op", "evaluate-op",
         "register-op", "summary-op", "notify-op"}
GPU_STEPS = {"train-op", "features-op"}
CACHED = {"fetch-op", "weights-op", "features-op", "plan-op", "train-op", "evaluate-op"}
#: Secrets each step may see, and no others.
SECRETS = {"source-version-op": {"adcore-s3", "adcore-mlflow"}, "fetch-op": {"adcore-s3"},
           "weights-op": {"adcore-s3"}, "features-op": set(), "plan-op": set(),
           "train-op": {"adcore-s3", "adcore-mlflow"}, "evaluate-op": {"adcore-mlflow"},
           "register-op": {"adcore-s3", "adcore-mlflow"}, "summary-op": {"adcore-mlflow"},
           "notify-op": {"adcore-mlflow", "adcore-webhook"}}


def _docs(text: str | None = None) -> tuple[dict, dict]:
    spec, platform = list(yaml.safe_load_all(text if text is not None else COMPILED.read_text()))
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def _tasks(spec: dict) -> dict[str, dict]:
    """Every task of the pipeline (root, exit handler and loop bodies) by component name."""
    out = {}
    dags = [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]
    for dag in dags:
        for task in dag["tasks"].values():
            name = task["componentRef"]["name"].removeprefix("comp-")
            if name in STEPS:
                out[name] = task
    return out


def _loops(spec: dict) -> dict[str, dict]:
    """The two ParallelFor tasks by name (categories, methods)."""
    dags = [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]
    return {t["taskInfo"]["name"]: t for dag in dags for t in dag["tasks"].values() if "parameterIterator" in t}


def test_compiled_yaml_is_not_stale(tmp_path):
    fresh = compile_pipeline(tmp_path / "training.yaml")
    assert fresh.read_text() == COMPILED.read_text(), (
        "pipelines/compiled/training.yaml is stale: run `python -m pipelines.compile` and commit the result")


def test_compile_is_deterministic_and_images_configurable(tmp_path):
    a = compile_pipeline(tmp_path / "a.yaml").read_text()
    b = compile_pipeline(tmp_path / "b.yaml").read_text()
    assert a == b
    c = compile_pipeline(tmp_path / "c.yaml", cpu_image="reg.local/cpu:1", train_image="reg.local/gpu:1").read_text()
    assert "image: reg.local/cpu:1" in c and "image: reg.local/gpu:1" in c and DEFAULT_CPU_IMAGE not in c


def test_parameters_and_structure():
    spec, _ = _docs()
    params = spec["root"]["inputDefinitions"]["parameters"]
    for name in ("data_uri", "categories", "methods", "profile", "weights_uri", "checkpoint_root",
                 "promotion_metric", "promotion_margin", "experiment", "overrides"):
        assert name in params, name
    assert params["categories"]["parameterType"] == "LIST"
    assert params["promotion_margin"]["parameterType"] == "NUMBER_DOUBLE"
    # what a GPU cluster should run: the paper profile, backbone weights and checkpoints in the object store
    assert params["profile"]["defaultValue"] == "paper"
    assert params["weights_uri"]["defaultValue"].startswith("s3://")
    assert params["checkpoint_root"]["defaultValue"].startswith("s3://")
    assert set(_tasks(spec)) == STEPS
    # the categories loop iterates over source-version's per-category fingerprints; methods over plan's items
    loops = _loops(spec)
    assert set(loops) == {"categories", "methods"}
    assert loops["categories"]["parameterIterator"]["items"]["inputParameter"] == \
        "pipelinechannel--source-version-op-Output"
    tasks = _tasks(spec)
    assert tasks["fetch-op"]["inputs"]["parameters"]["source_version"]["componentInputParameter"] == \
        "pipelinechannel--source-version-op-Output-loop-item"
    # one dataset per category: fetch inside the loop; register reads no dataset artifact, only its URI
    assert "dataset" not in tasks["register-op"]["inputs"].get("artifacts", {})
    assert "dataset_uri" in tasks["register-op"]["inputs"]["parameters"]
    # train's cache key holds data digest, code version and settings
    for name in ("data_digest", "code_version", "profile", "overrides", "checkpoint_root"):
        assert name in tasks["train-op"]["inputs"]["parameters"], name
    # no step installs packages at run time: the image carries everything
    for name, executor in spec["deploymentSpec"]["executors"].items():
        assert "pip install" not in " ".join(executor["container"]["command"]), name


def test_exit_handler_notifies_whatever_happened():
    spec, _ = _docs()
    root = spec["root"]["dag"]["tasks"]
    notify = root["notify-op"]
    assert notify["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    (handler,) = notify["dependentTasks"]
    assert notify["inputs"]["parameters"]["status"]["taskFinalStatus"]["producerTask"] == handler
    assert set(root) == {"notify-op", handler}  # everything else runs inside the handler
    body = spec["components"][root[handler]["componentRef"]["name"]]["dag"]["tasks"]
    assert {t["componentRef"]["name"] for t in body.values()} >= {"comp-source-version-op", "comp-summary-op"}
    assert notify["inputs"]["parameters"]["job_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"


def test_loops_are_bounded():
    spec, _ = _docs()
    loops = _loops(spec)
    defaults = ClusterSettings()
    assert loops["categories"]["iteratorPolicy"]["parallelismLimit"] == defaults.parallel_categories
    assert loops["methods"]["iteratorPolicy"]["parallelismLimit"] == defaults.parallel_methods


def test_images_gpu_selector_and_toleration():
    spec, k8s = _docs()
    for name, executor in spec["deploymentSpec"]["executors"].items():
        step = name.removeprefix("exec-")
        container = executor["container"]
        resources = container.get("resources", {})
        if step in GPU_STEPS:
            assert container["image"] == DEFAULT_TRAIN_IMAGE
            assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
            assert str(resources["accelerator"]["resourceCount"]) == "1"
            assert k8s[name]["nodeSelector"]["labels"] == {"adcore.io/pool": "gpu"}
            assert k8s[name]["tolerations"] == [GPU_TOLERATION]
        else:
            assert container["image"] == DEFAULT_CPU_IMAGE, step
            assert "accelerator" not in resources, step
            assert "nodeSelector" not in k8s.get(name, {}) and "tolerations" not in k8s.get(name, {}), step


def test_timeouts_limits_queue_labels_and_scratch_on_every_step():
    spec, k8s = _docs()
    defaults = ClusterSettings()
    assert {n.removeprefix("exec-") for n in k8s} == STEPS
    for name, executor in spec["deploymentSpec"]["executors"].items():
        step = name.removeprefix("exec-").removesuffix("-op")
        resources = executor["container"]["resources"]
        cpu, memory, memory_limit = RESOURCES[step]
        assert resources["resourceMemoryLimit"] == memory_limit and resources["resourceMemoryRequest"] == memory
        assert resources["resourceCpuRequest"] == cpu
        settings = k8s[name]
        assert settings["activeDeadlineSeconds"] == str(defaults.timeout(step)), name
        assert 0 < int(settings["activeDeadlineSeconds"]) <= 6 * 3600
        assert settings["podMetadata"]["labels"] == {"adcore.io/role": "pipeline",
                                                     "kueue.x-k8s.io/queue-name": "adcore",
                                                     "kueue.x-k8s.io/priority-class": "adcore-nightly"}
        scratch = settings.get("emptyDirMounts", [])
        if step in ("fetch", "features", "train", "evaluate", "register"):
            assert scratch == [{"volumeName": "scratch", "mountPath": "/tmp", "sizeLimit": defaults.scratch}], name
        else:
            assert not scratch, name


def test_each_step_gets_only_the_secrets_it_needs():
    spec, k8s = _docs()
    for name, settings in k8s.items():
        step = name.removeprefix("exec-")
        env = {}
        for ref in settings.get("secretAsEnv", []):
            for pair in ref["keyToEnv"]:
                env[pair["envVar"]] = (ref["secretName"], pair["secretKey"], ref.get("optional", False))
        assert {secret for secret, _, _ in env.values()} == SECRETS[step], step
        if "adcore-s3" in SECRETS[step]:
            assert env["AWS_ACCESS_KEY_ID"] == ("adcore-s3", "AWS_ACCESS_KEY_ID", False), name
            assert env["AWS_ENDPOINT_URL"] == ("adcore-s3", "AWS_ENDPOINT_URL", True), name  # absent for AWS S3
        if "adcore-mlflow" in SECRETS[step]:  # MLflow sits behind authentication: all three are required
            for key in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
                assert env[key] == ("adcore-mlflow", key, False), (name, key)
        if "adcore-webhook" in SECRETS[step]:
            assert env["ADCORE_WEBHOOK_URL"] == ("adcore-webhook", "ADCORE_WEBHOOK_URL", True)
    # nothing secret is written into the spec itself
    text = COMPILED.read_text()
    assert not re.search(r"AWS_SECRET_ACCESS_KEY\s*[:=]\s*['\"]?[A-Za-z0-9/+]{16,}", text)
    assert "hooks.slack.com" not in text and "webhook_url" not in spec["root"]["inputDefinitions"]["parameters"]


def test_retry_policy_and_caching_flags():
    spec, _ = _docs()
    for name, task in _tasks(spec).items():
        retry = task["retryPolicy"]
        assert retry["maxRetryCount"] == RETRY["num_retries"] >= 2, name
        assert retry["backoffDuration"] == RETRY["backoff_duration"], name
        assert float(retry["backoffFactor"]) == RETRY["backoff_factor"] > 1, name
        assert retry["backoffMaxDuration"] == RETRY["backoff_max_duration"], name
        cached = task.get("cachingOptions", {}).get("enableCache", False)
        assert cached == (name in CACHED), name
    assert _tasks(spec)["register-op"].get("cachingOptions", {}).get("enableCache") is not True


def test_compile_flags(tmp_path, capsys):
    from pipelines.compile import main

    out = tmp_path / "custom.yaml"
    assert main(["--output", str(out), "--timeout", "train=7200", "--parallel-categories", "2",
                 "--parallel-methods", "1", "--queue", "", "--priority", "", "--no-cache-train",
                 "--legacy-backend"]) == 0
    spec, k8s = _docs(out.read_text())
    assert k8s["exec-train-op"]["activeDeadlineSeconds"] == "7200"
    assert {n: t["iteratorPolicy"]["parallelismLimit"] for n, t in _loops(spec).items()} == {"categories": 2,
                                                                                             "methods": 1}
    assert all(s["podMetadata"]["labels"] == {"adcore.io/role": "pipeline"} for s in k8s.values())
    tasks = _tasks(spec)
    assert not tasks["train-op"].get("cachingOptions", {}).get("enableCache")
    assert not tasks["evaluate-op"].get("cachingOptions", {}).get("enableCache")
    # older backends: no optional Secret keys at all (their drivers reject the field)
    assert all("optional" not in ref for s in k8s.values() for ref in s.get("secretAsEnv", []))
    assert main(["--output", str(out), "--timeout", "train=soon"]) == 2
    assert "--timeout 'train=soon'" in capsys.readouterr().err


def test_scratch_sized_from_a_manifest(tmp_path):
    from pipelines.data_volume import category_bytes, night_bytes, scratch_size

    manifest = tmp_path / "manifest.json"
    gib = 1024**3
    manifest.write_text(json.dumps({"files": [
        {"path": "bottle/train/good/000.png", "size": 3 * gib}, {"path": "bottle/test/good/000.png", "size": gib},
        {"path": "carpet/train/good/000.png", "size": gib}, {"path": "LICENSE.txt", "size": 5}]}))
    assert category_bytes(manifest) == {"bottle": 4 * gib, "carpet": gib}
    assert scratch_size(manifest) == "12Gi"  # 2 x 4 GiB + 4 GiB
    r = night_bytes({"bottle": 4 * gib, "carpet": gib}, methods=5)
    assert r["before_bytes"] == 5 * gib * (2 + 2 + 3 * 2 * 5) and r["after_bytes"] == 5 * gib * (3 + 2 * 5)


# --------------------------------------------------------------------------------------------- schedule


class FakeKFP:
    """Just enough of the KFP v2beta1 REST API for kfp.Client's upload, experiment and recurring-run calls."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.pipelines: dict[str, dict] = {}
        self.versions: dict[str, list[dict]] = {}
        self.experiments: dict[str, dict] = {}
        self.recurring: dict[str, dict] = {}
        self.counter = 0

    def new_id(self, kind: str) -> str:
        self.counter += 1
        return f"{kind}-{self.counter}"

    @staticmethod
    def _filter_value(query: dict) -> str | None:
        if "filter" not in query:
            return None
        (predicate,) = json.loads(query["filter"][0])["predicates"]
        assert predicate["operation"] in (1, "EQUALS") and predicate["key"] == "display_name", predicate
        return predicate.get("stringValue", predicate.get("string_value"))

    def handle(self, method: str, path: str, query: dict, body: bytes, headers) -> tuple[int, dict]:
        record = {"method": method, "path": path, "query": query}
        if headers.get("Content-Type", "").startswith("multipart/form-data"):
            msg = BytesParser(policy=email_policy).parsebytes(
                b"Content-Type: " + headers["Content-Type"].encode() + b"\r\n\r\n" + body)
            record["files"] = {part.get_filename(): part.get_payload(decode=True) for part in msg.iter_parts()}
        elif body:
            record["json"] = json.loads(body)
        self.requests.append(record)

        api = "/apis/v2beta1"
        if path == f"{api}/healthz":
            return 200, {"multi_user": False}
        if method == "GET" and path == f"{api}/pipelines":
            name = self._filter_value(query)
            found = [p for p in self.pipelines.values() if name is None or p["display_name"] == name]
            return 200, {"pipelines": found, "total_size": len(found)} if found else {}
        if method == "POST" and path == f"{api}/pipelines/upload":
            pid = self.new_id("pipeline")
            self.pipelines[pid] = {"pipeline_id": pid, "display_name": query["name"][0],
                                   "description": query.get("description", [""])[0]}
            self.versions[pid] = [{"pipeline_id": pid, "pipeline_version_id": self.new_id("version"),
                                   "display_name": query["name"][0]}]
            return 200, self.pipelines[pid]
        if method == "POST" and path == f"{api}/pipelines/upload_version":
            pid = query["pipelineid"][0]
            version = {"pipeline_id": pid, "pipeline_version_id": self.new_id("version"),
                       "display_name": query["name"][0]}
            self.versions[pid].append(version)
            return 200, version
        m = re.fullmatch(rf"{api}/pipelines/([^/]+)", path)
        if m and method == "GET" and m.group(1) in self.pipelines:
            return 200, self.pipelines[m.group(1)]
        m = re.fullmatch(rf"{api}/pipelines/([^/]+)/versions", path)
        if m and method == "GET":
            name = self._filter_value(query)
            found = [v for v in reversed(self.versions.get(m.group(1), []))
                     if name is None or v["display_name"] == name]
            return 200, {"pipeline_versions": found[:1], "total_size": len(found)} if found else {}
        if method == "GET" and path == f"{api}/experiments":
            name = self._filter_value(query)
            found = [e for e in self.experiments.values() if name is None or e["display_name"] == name]
            return 200, {"experiments": found, "total_size": len(found)} if found else {}
        if method == "POST" and path == f"{api}/experiments":
            eid = self.new_id("experiment")
            self.experiments[eid] = {"experiment_id": eid, "display_name": record["json"]["display_name"]}
            return 200, self.experiments[eid]
        if method == "GET" and path == f"{api}/recurringruns":
            name = self._filter_value(query)
            found = [r for r in self.recurring.values() if name is None or r["display_name"] == name]
            return 200, {"recurringRuns": found, "total_size": len(found)} if found else {}
        if method == "POST" and path == f"{api}/recurringruns":
            rid = self.new_id("recurring")
            self.recurring[rid] = {**record["json"], "recurring_run_id": rid}
            return 200, self.recurring[rid]
        m = re.fullmatch(rf"{api}/recurringruns/([^/]+)", path)
        if m and method == "DELETE":
            self.recurring.pop(m.group(1), None)
            return 200, {}
        return 404, {"error": f"stand-in: no route for {method} {path}"}


@pytest.fixture
def fake_kfp():
    state = FakeKFP()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            url = urlparse(self.path)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                status, payload = state.handle(self.command, url.path, parse_qs(url.query), body, self.headers)
            except Exception as exc:  # answer, so the client fails with the reason instead of retrying
                status, payload = 500, {"error": f"stand-in: {exc!r}"}
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = _serve

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.host = f"http://127.0.0.1:{server.server_port}"
    yield state
    server.shutdown()
    server.server_close()


def _posts(state: FakeKFP, suffix: str) -> list[dict]:
    return [r for r in state.requests if r["method"] == "POST" and r["path"].endswith(suffix)]


def test_schedule_uploads_and_creates_the_recurring_run(fake_kfp, capsys):
    from pipelines.schedule import main

    rc = main(["--host", fake_kfp.host, "--cron", "0 0 2 * * *", "--experiment", "nightly",
               "--param", 'categories=["bottle","carpet"]', "--param", "profile=paper"])
    assert rc == 0
    out = capsys.readouterr().out  # kfp.Client prints links to the UI first
    result = json.loads(out[out.index("{\n"):])

    uploads = _posts(fake_kfp, "/pipelines/upload")
    assert len(uploads) == 1
    assert uploads[0]["query"]["name"] == ["adcore-training"]
    (content,) = uploads[0]["files"].values()
    assert content == COMPILED.read_bytes()  # the committed, compiled pipeline

    (exp,) = _posts(fake_kfp, "/experiments")
    assert exp["json"]["display_name"] == "nightly"

    (create,) = _posts(fake_kfp, "/recurringruns")
    body = create["json"]
    assert body["trigger"]["cron_schedule"]["cron"] == "0 0 2 * * *"
    assert int(body["max_concurrency"]) == 1
    assert body["no_catchup"] is True
    assert body["mode"] == "ENABLE"
    assert body["service_account"] == "adcore-pipeline-runner"
    assert body["display_name"] == "adcore-nightly"
    assert body["experiment_id"] == exp_id(fake_kfp, "nightly")
    ref = body["pipeline_version_reference"]
    assert ref["pipeline_id"] == result["pipeline_id"] and ref["pipeline_version_id"] == result["version_id"]
    assert body["runtime_config"]["parameters"] == {"categories": ["bottle", "carpet"], "profile": "paper"}
    assert "pipeline_spec" not in body or not body["pipeline_spec"]  # by reference to the uploaded version


def exp_id(state: FakeKFP, name: str) -> str:
    return next(e["experiment_id"] for e in state.experiments.values() if e["display_name"] == name)


def test_schedule_again_updates_instead_of_duplicating(fake_kfp, tmp_path):
    from pipelines.schedule import schedule

    first = schedule(fake_kfp.host, "0 0 2 * * *")
    # Same YAML: no new upload, the recurring run is replaced (one left, with the new cron).
    second = schedule(fake_kfp.host, "0 30 3 * * *")
    assert len(_posts(fake_kfp, "/pipelines/upload")) == 1
    assert not _posts(fake_kfp, "/pipelines/upload_version")
    assert second["version_id"] == first["version_id"]
    assert second["replaced"] == [first["recurring_run_id"]]
    assert [r["trigger"]["cron_schedule"]["cron"] for r in fake_kfp.recurring.values()] == ["0 30 3 * * *"]
    assert len(_posts(fake_kfp, "/experiments")) == 1  # the experiment is reused

    # A changed pipeline: a new version of the same pipeline, and the schedule points at it.
    changed = tmp_path / "changed.yaml"
    changed.write_text(COMPILED.read_text().replace("adcore: fetch", "adcore (changed): fetch", 1))
    third = schedule(fake_kfp.host, "0 0 2 * * *", package=changed)
    (version_upload,) = _posts(fake_kfp, "/pipelines/upload_version")
    assert version_upload["query"]["pipelineid"] == [first["pipeline_id"]]
    assert third["pipeline_id"] == first["pipeline_id"] and third["version_id"] != first["version_id"]
    (only,) = fake_kfp.recurring.values()
    assert only["pipeline_version_reference"]["pipeline_version_id"] == third["version_id"]


def test_schedule_rejects_a_five_field_cron(fake_kfp, capsys):
    from pipelines.schedule import main

    assert main(["--host", fake_kfp.host, "--cron", "0 2 * * *"]) == 2
    assert "6 fields" in capsys.readouterr().err
    assert not fake_kfp.requests


# --------------------------------------------------------------------------------------------- adapters


def test_summary_table_from_nested_collected_outputs():
    from pipelines.steps import summary_markdown

    rows = [[json.dumps({"category": "b", "method": "cfa", "image_auroc": 0.5, "decision": "rejected"}),
             json.dumps({"category": "a", "method": "patchcore", "image_auroc": 0.91234, "decision": "promoted",
                         "version": 3})]]
    markdown, flat = summary_markdown(rows, title="t")
    lines = markdown.splitlines()
    assert lines[2].startswith("| category | method | image_auroc |") and "decision" in lines[2]
    assert lines[4] == "| a | patchcore | 0.9123 | promoted | 3 |"
    assert lines[5] == "| b | cfa | 0.5000 | rejected | - |"
    assert [r["method"] for r in flat] == ["patchcore", "cfa"]


def test_source_fingerprint_follows_the_content(tmp_path):
    import os

    from pipelines.steps import source_fingerprint

    (tmp_path / "tile" / "train" / "good").mkdir(parents=True)
    image = tmp_path / "tile" / "train" / "good" / "000.png"
    image.write_bytes(b"one")
    first = source_fingerprint(str(tmp_path))
    assert source_fingerprint(str(tmp_path)) == first
    image.write_bytes(b"two!")
    os.utime(image, (1, 1))
    assert source_fingerprint(str(tmp_path)) != first


def test_training_cache_copy_leaves_the_input_untouched(tmp_path):
    from pipelines.steps import link_tree

    src = tmp_path / "cache"
    (src / "entry").mkdir(parents=True)
    (src / "entry" / "stage0.npy").write_bytes(b"features")
    dst = tmp_path / "copy"
    link_tree(src, dst)
    (dst / "new-entry").mkdir()
    (dst / "new-entry" / "stage0.npy").write_bytes(b"more")
    assert (dst / "entry" / "stage0.npy").read_bytes() == b"features"
    assert sorted(p.name for p in src.iterdir()) == ["entry"]


def test_kfp_ui_outputs_roc_and_html_page(tmp_path):
    """What evaluate_op hands the KFP UI: ClassificationMetrics ROC points and a self-contained HTML page."""
    from kfp.dsl import ClassificationMetrics
    from PIL import Image

    from pipelines.ui import evaluation_html, roc_points

    (tmp_path / "overlays").mkdir()
    (tmp_path / "scores.csv").write_text("path,defect,label,score\na.png,good,0,0.1\nb.png,good,0,0.4\n"
                                         "c.png,crack,1,0.35\nd.png,crack,1,0.8\n")
    (tmp_path / "metrics.json").write_text(json.dumps({"image_auroc": 0.75, "n_images": 4}))
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "roc.png")
    Image.new("RGB", (8, 8), (0, 255, 0)).save(tmp_path / "overlays" / "crack_c.png")
    fpr, tpr, thresholds = roc_points(tmp_path / "scores.csv")
    assert fpr[0] == 0.0 and tpr[-1] == 1.0 and fpr[-1] == 1.0 and all(t < float("inf") for t in thresholds)
    # the area under these points is the image AUROC of the metrics: 3 of 4 pairs ordered
    auc = sum((fpr[i + 1] - fpr[i]) * (tpr[i + 1] + tpr[i]) / 2 for i in range(len(fpr) - 1))
    assert auc == pytest.approx(0.75)
    roc = ClassificationMetrics(uri=str(tmp_path / "roc"))
    roc.log_roc_curve(fpr, tpr, thresholds)
    assert len(roc.metadata["confidenceMetrics"]) == len(fpr)
    page = evaluation_html(tmp_path, "tile: patchcore")
    assert page.count("<img src=\"data:image/png;base64,") == 2 and "crack_c.png" in page
    assert "<td>image_auroc</td><td>0.7500</td>" in page


def test_register_downloads_the_category_only_when_opened(demo_root, tmp_path):
    import os

    from pipelines.steps import CategoryDataOnDemand

    data = CategoryDataOnDemand(str(demo_root), "widget", tmp_path / "scratch")
    assert data and not (tmp_path / "scratch").exists()  # truthy for `if data_root:`, nothing fetched yet
    root = os.fspath(data)
    assert root == str(data) == str(tmp_path / "scratch")
    assert sorted(p.name for p in (tmp_path / "scratch").iterdir() if not p.name.startswith(".")) == [
        "manifest.json", "widget"]
