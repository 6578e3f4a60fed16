"""components.notify: the night's summary as a webhook receives it (a real HTTP server on 127.0.0.1), with failed
tasks and promotions, and no credential in it. The whole exit handler runs in tests/test_kfp_local_night.py."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from adcore.errors import ConfigError
from components.notify import build_summary, notify


def test_summary_of_a_failed_night_names_the_task_and_masks_credentials():
    status = {"state": "FAILED", "pipeline_task_name": "exit-handler-1",
              "error": {"code": 1, "message": "train-op failed: s3://k@bucket x https://u:hunter2@mlflow:5000/api"}}
    promotions = [{"category": "tile", "method": "cfa", "decision": "promoted", "version": "4", "run_id": "r1"},
                  {"category": "tile", "method": "frad", "decision": "rejected", "version": "2", "run_id": "r2"}]
    payload = build_summary(status, promotions, pipeline="adcore-training", job="job-7")
    assert payload["state"] == "FAILED"
    assert payload["failed_tasks"] == [{"task": "exit-handler-1", "message": payload["failed_tasks"][0]["message"]}]
    assert "hunter2" not in json.dumps(payload) and "https://u:***@mlflow:5000" in json.dumps(payload)
    assert [p["method"] for p in payload["promoted"]] == ["cfa"]
    assert payload["text"].splitlines() == [
        "adcore adcore-training job-7: FAILED", payload["text"].splitlines()[1],
        "promoted: tile/cfa v4", "1 model(s) registered without promotion"]
    ok = build_summary({"state": "SUCCEEDED", "error": {}}, [], pipeline="p", job="j")
    assert ok["failed_tasks"] == [] and ok["text"] == "adcore p j: SUCCEEDED"


def test_notify_posts_to_the_webhook_of_the_environment(tmp_path, monkeypatch, capsys):
    received = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append((self.path, self.headers["Content-Type"],
                             json.loads(self.rfile.read(int(self.headers["Content-Length"])))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("ADCORE_WEBHOOK_URL", f"http://127.0.0.1:{server.server_port}/hooks/T0/B1")
        payload = notify({"state": "SUCCEEDED", "error": {}}, pipeline="adcore-training", job="job-1",
                         tracking_uri=f"sqlite:///{tmp_path / 'empty.db'}")
    finally:
        server.shutdown()
        server.server_close()
    (path, content_type, body), = received
    assert path == "/hooks/T0/B1" and content_type == "application/json"
    assert body == {k: v for k, v in payload.items() if k != "webhook_status"} and payload["webhook_status"] == 204
    assert body["registered"] == [] and "adcore adcore-training job-1: SUCCEEDED" in capsys.readouterr().out

    monkeypatch.setenv("ADCORE_WEBHOOK_URL", f"http://127.0.0.1:{server.server_port}/gone")  # server closed
    with pytest.raises(ConfigError, match="ADCORE_WEBHOOK_URL: POST to http://127.0.0.1"):
        notify({"state": "FAILED", "error": {}}, pipeline="p", job="j", tracking_uri=f"sqlite:///{tmp_path / 'e.db'}")
