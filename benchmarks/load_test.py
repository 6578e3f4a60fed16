"""Load test of the served champion on loopback: p50 / p95 / p99 latency and images per second at several
concurrencies, for PatchCore and PRN, and for the backbone alone served the same way (the floor).

Each model is trained on the demo data (cpu profile), evaluated, registered in a sqlite registry (it becomes
champion) and served by ``mlflow models serve -m models:/<name>@champion --env-manager local`` on 127.0.0.1 - the
server and model of tests/test_serving.py and infra/k8s/serving. The floor is the PatchCore server called with
``backbone_only=true``: the same request, decoding, resize and backbone, without the method's head, upsampling,
blur and score. Every request carries one base64 PNG (256 px, resized by the model to its input size) and asks for
no maps (``return_maps=false``: a line needs the decision; maps make the answer ~100x larger).

The client is a bounded one of its own (a thread per concurrent user, one keep-alive HTTP connection each): a fixed
number of requests per level, also cut at ``--max-seconds``; locust would add gevent and a time-bounded run for no
gain at these sizes. Server and client share the machine's cores (``--cpus`` pins both with taskset when given).

    python benchmarks/load_test.py --output runs/load_test            # full: PatchCore, PRN, floor at 1, 4, 16
    python benchmarks/load_test.py --methods patchcore --concurrency 1 --requests 4 --no-floor   # smoke
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: Shorter training than the cpu profile where it does not change the served network (inference cost).
TRAIN_OVERRIDES = {"patchcore": [], "prn": ["method.prn.epochs=1"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def register(method: str, data: Path, work: Path, uri: str) -> str:
    """The champion URI of ``bench-tile-<method>``: trained, evaluated and registered unless the registry in
    ``--output`` already has one (a re-run measures again without retraining)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from components.evaluate import evaluate
    from components.register import register_model
    from components.train import train

    try:
        MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version_by_alias(f"bench-tile-{method}", "champion")
        return f"models:/bench-tile-{method}@champion"
    except MlflowException:
        pass
    tr = train(method, str(data), "tile", str(work / "models" / method), overrides=TRAIN_OVERRIDES[method],
               track=False)
    ev = evaluate(tr["model_dir"], str(data), "tile", str(work / "eval" / method), track=False)
    reg = register_model(tr["model_dir"], ev["metrics_json"], "tile", method, prefix="bench", tracking_uri=uri,
                         experiment="load-test")
    if reg.get("champion_version") is None:  # a re-run into the same --output keeps the earlier champion
        raise SystemExit(f"{method}: no champion ({reg['reasons']})")
    return reg["champion_uri"]


def serve(model_uri: str, uri: str, work: Path, cpus: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "ADCORE_DEVICE": "cpu",
           "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
           # the scoring server starts the `uvicorn` on PATH: this interpreter's
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
               "--host", "127.0.0.1", "--port", str(port)]
    if cpus:
        command = ["taskset", "-c", cpus, *command]
    log = open(work / f"serve-{port}.log", "wb")
    proc = subprocess.Popen(command, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while True:
        try:
            urllib.request.urlopen(f"{url}/ping", timeout=2).close()
            return proc, url
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                raise SystemExit(f"server for {model_uri} did not start; see {log.name}") from None
            time.sleep(0.5)


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, 15)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)


def load(url: str, body: bytes, concurrency: int, requests: int, max_seconds: float) -> dict:
    """``requests`` POSTs spread over ``concurrency`` threads; latency percentiles and images per second."""
    host, port = url.removeprefix("http://").split(":")
    latencies: list[float] = []
    errors: list[str] = []
    remaining = [requests]
    lock = threading.Lock()
    deadline = time.perf_counter() + max_seconds

    def user() -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=120)
        while True:
            with lock:
                if remaining[0] <= 0 or time.perf_counter() > deadline:
                    break
                remaining[0] -= 1
            t0 = time.perf_counter()
            conn.request("POST", "/invocations", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            payload = response.read()
            elapsed = time.perf_counter() - t0
            with lock:
                if response.status == 200:
                    latencies.append(elapsed)
                else:
                    errors.append(f"{response.status}: {payload[:200]!r}")
        conn.close()

    start = time.perf_counter()
    threads = [threading.Thread(target=user) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ms = np.asarray(latencies) * 1000
    return {"concurrency": concurrency, "requests": len(latencies), "errors": len(errors),
            "first_error": errors[0] if errors else None, "wall_s": round(wall, 2),
            "p50_ms": round(float(np.percentile(ms, 50)), 1) if len(ms) else None,
            "p95_ms": round(float(np.percentile(ms, 95)), 1) if len(ms) else None,
            "p99_ms": round(float(np.percentile(ms, 99)), 1) if len(ms) else None,
            "images_per_s": round(len(latencies) / wall, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("runs/load_test"))
    parser.add_argument("--methods", nargs="+", default=["patchcore", "prn"])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=64, help="requests per level (at least 2 per user)")
    parser.add_argument("--max-seconds", type=float, default=90.0, help="cut a level after this long")
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--cpus", default="", help="taskset CPU list for the server, e.g. 0,1")
    parser.add_argument("--no-floor", dest="floor", action="store_false")
    args = parser.parse_args(argv)

    from adcore.data.demo import generate_demo_dataset

    work = args.output.resolve()
    work.mkdir(parents=True, exist_ok=True)
    data = generate_demo_dataset(work / "data", categories=("tile",), image_size=256, seed=0)
    uri = f"sqlite:///{work / 'mlflow.db'}"
    image = next(iter(sorted((data / "tile" / "test" / "crack").glob("*.png"))))
    payload = {"inputs": [base64.b64encode(image.read_bytes()).decode()], "params": {"return_maps": False}}

    rows = []
    targets = [(m, m, {}) for m in args.methods]
    if args.floor:
        targets.append(("backbone (floor)", args.methods[0], {"backbone_only": True}))
    champions = {m: register(m, data, work, uri) for m in args.methods}
    for label, method, params in targets:
        body = json.dumps({**payload, "params": {**payload["params"], **params}}).encode()
        proc, url = serve(champions[method], uri, work, args.cpus)
        try:
            load(url, body, 1, args.warmup, args.max_seconds)
            for c in args.concurrency:
                row = {"model": label, **load(url, body, c, max(args.requests, 2 * c), args.max_seconds)}
                print(json.dumps(row), flush=True)
                rows.append(row)
        finally:
            stop(proc)

    lines = ["| model | concurrency | requests | p50 ms | p95 ms | p99 ms | images/s | errors |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['concurrency']} | {r['requests']} | {r['p50_ms']} | {r['p95_ms']} | "
              f"{r['p99_ms']} | {r['images_per_s']} | {r['errors']} |" for r in rows]
    table = "\n".join(lines)
    print(table)
    (work / "load_test.json").write_text(json.dumps(rows, indent=2) + "\n")
    (work / "load_test.md").write_text(table + "\n")
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
