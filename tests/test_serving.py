"""The registry's champion served over HTTP by `mlflow models serve` (the ecosystem's scoring server) from an
environment where this checkout is not importable: the logged model carries adcore (code_paths) and pinned
requirements. Real PNG / JPEG images go in; the answer equals `adcore predict` on the same files; bad requests get
a 400 with a one-line reason and the server goes on serving.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TINY = ["data.image_size=64", "train.device=cpu"]
NAME = "serve-tile-patchcore"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def register_champion(root: Path, data_root: Path, prefix: str = "serve", method: str = "patchcore",
                      extra: tuple[str, ...] = ()) -> tuple[str, Path]:
    """Train, evaluate and register a small model of the demo 'tile' category in a sqlite registry under
    ``root`` (``<prefix>-tile-<method>``); it becomes champion. Returns the tracking URI and the model directory."""
    from components.evaluate import evaluate
    from components.register import register_model
    from components.train import train

    uri = f"sqlite:///{root / 'mlflow.db'}"
    tr = train(method, str(data_root), "tile", str(root / "model"), overrides=[*TINY, *extra], track=False)
    ev = evaluate(tr["model_dir"], str(data_root), "tile", str(root / "eval"), track=False)
    reg = register_model(tr["model_dir"], ev["metrics_json"], "tile", method, prefix=prefix, tracking_uri=uri,
                         experiment="serving")
    assert reg["decision"] == "promoted" and reg["name"] == f"{prefix}-tile-{method}", reg
    return uri, Path(tr["model_dir"])


def clean_environment(folder: Path) -> Path:
    """A venv whose only packages are this one's site-packages, added as a plain path: the editable install's
    import hook (a .pth there) is not processed, so ``adcore`` and ``components`` cannot be imported."""
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(folder)], check=True, timeout=120)
    python = folder / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    Path(purelib, "dev-packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # `mlflow models serve` starts the `uvicorn` found on PATH: one of this environment's, not the venv's script
    uvicorn = folder / "bin" / "uvicorn"
    uvicorn.write_text(f"#!{python}\nimport sys\nfrom uvicorn.main import main\nsys.exit(main())\n")
    uvicorn.chmod(0o755)
    return python


def clean_env_vars(folder: Path, uri: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH=f"{folder / 'bin'}{os.pathsep}{env.get('PATH', '')}", MLFLOW_TRACKING_URI=uri,
               ADCORE_DEVICE="cpu", ADCORE_NO_PROGRESS="1")
    return env


def start_server(python: Path, env: dict[str, str], cwd: Path, model_uri: str, port: int,
                 log: Path) -> subprocess.Popen:
    with open(log, "wb") as fh:
        return subprocess.Popen([str(python), "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager",
                                 "local", "--host", "127.0.0.1", "--port", str(port)],
                                cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


def wait_until_up(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(f"{url}/ping", timeout=2).close()
            return
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"mlflow models serve did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, 15)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)


def post(url: str, body: bytes | dict) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(f"{url}/invocations", data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


@pytest.fixture(scope="session")
def demo_champion(demo_root, tmp_path_factory) -> dict:
    """A PatchCore champion of the demo 'tile' category in a sqlite registry (shared with test_batch_predict)."""
    root = tmp_path_factory.mktemp("registry")
    uri, model_dir = register_champion(root, demo_root)
    return {"uri": uri, "model_dir": model_dir, "name": NAME, "model_uri": f"models:/{NAME}@champion"}


@pytest.fixture(scope="module")
def served(demo_champion, tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    python = clean_environment(root / "venv")
    probe = subprocess.run([str(python), "-c", "import adcore"], cwd=root, capture_output=True, text=True,
                           env=clean_env_vars(root / "venv", ""))
    if probe.returncode == 0:
        pytest.skip("adcore is importable from this site-packages (not an editable install), so no environment "
                    "without the checkout can be built from it")
    assert "No module named 'adcore'" in probe.stderr
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(python, clean_env_vars(root / "venv", demo_champion["uri"]), root,
                        demo_champion["model_uri"], port, root / "serve.log")
    wait_until_up(url, proc, root / "serve.log")
    yield {"url": url, "model_dir": demo_champion["model_dir"], "root": root, "log": root / "serve.log"}
    stop(proc)


def adcore_predict(model_dir: Path, images: list[Path], output: Path, *extra: str) -> list[dict]:
    from adcore.cli import main

    assert main(["--no-progress", "predict", "--model", str(model_dir), "--output", str(output), *extra,
                 *map(str, images)]) == 0
    return [json.loads(line) for line in (output / "predictions.jsonl").read_text().splitlines()]


def test_champion_served_from_a_clean_environment_equals_adcore_predict(served, demo_root, tmp_path):
    url = served["url"]
    paths = [demo_root / "tile" / "test" / "good" / "000.png", *sorted((demo_root / "tile" / "test").glob("c*/0*.png"))]
    jpeg = tmp_path / "crack.jpg"
    Image.open(paths[-1]).convert("RGB").save(jpeg, quality=90)
    paths.append(jpeg)
    expected = adcore_predict(served["model_dir"], paths, tmp_path / "pred")

    body = {"inputs": [b64(p) for p in paths]}
    status, answer = post(url, body)
    assert status == 200, answer
    out = answer["predictions"]
    print("request:", json.dumps({"inputs": [s[:48] + "..." for s in body["inputs"]]}))
    print("answer:", json.dumps({k: v for k, v in out.items() if k != "maps"}))
    np.testing.assert_allclose(out["scores"], [r["score"] for r in expected], rtol=1e-6)
    assert out["threshold"] == [r["threshold"] for r in expected]
    assert ["defective" if d else "good" for d in out["defective"]] == [r["decision"] for r in expected]
    assert {"good", "defective"} == {r["decision"] for r in expected}  # the demo images give both answers
    np.testing.assert_allclose(out["normalized_scores"], [r["normalized_score"] for r in expected], atol=1e-6)
    assert np.asarray(out["maps"]).shape == (len(paths), 64, 64)

    # the same images as uint8 arrays (JSON integers), with the threshold overridden per call, no maps
    arrays = [np.asarray(Image.open(p).convert("RGB")).tolist() for p in paths[:2]]
    threshold = expected[1]["score"] + 1.0  # above the crack's score: that image is now good
    overridden = adcore_predict(served["model_dir"], paths[:2], tmp_path / "pred2", "--threshold", str(threshold))
    assert [r["decision"] for r in overridden] == ["good", "good"]
    status, answer = post(url, {"inputs": arrays, "params": {"threshold": threshold, "return_maps": False}})
    assert status == 200, answer
    out = answer["predictions"]
    assert "maps" not in out and out["threshold"] == [threshold, threshold]
    np.testing.assert_allclose(out["scores"], [r["score"] for r in expected[:2]], rtol=1e-6)
    assert ["defective" if d else "good" for d in out["defective"]] == [r["decision"] for r in overridden]


def test_bad_requests_get_a_400_and_the_server_keeps_serving(served, demo_root):
    url = served["url"]
    png = demo_root / "tile" / "test" / "good" / "000.png"
    good = {"inputs": [b64(png)], "params": {"return_maps": False}}
    image = np.asarray(Image.open(png).convert("RGB"))
    cases = {
        "wrong shape": ({"inputs": [[1, 2, 3]]}, "expected an image of shape (H, W, 3) or (H, W), got shape (3,)"),
        "wrong dtype": ({"inputs": [(image / 255.0).tolist()]}, "expected uint8 pixel values (integers 0..255), "
                                                                 "got dtype float64"),
        "out of range": ({"inputs": [(image.astype(int) * 2).tolist()]}, "pixel values must be in 0..255"),
        "corrupt PNG": ({"inputs": [base64.b64encode(png.read_bytes()[:300]).decode()]},
                        "image 0: unreadable image (OSError: image file is truncated)"),
        "not an image": ({"inputs": ["hello"]}, "neither PNG/JPEG/BMP bytes nor their base64 encoding"),
        "empty batch": ({"inputs": []}, "Failed to enforce schema of data '[]'"),
        "no inputs key": ({"images": [b64(png)]}, "The input must be a JSON dictionary"),
        "bad threshold": ({**good, "params": {"threshold": "high"}}, "threshold"),
        "50 MB body": ({"inputs": ["A" * 50_000_000]}, "50.0 MB of image data in one request, more than 16 MB"),
        "not JSON": (b"\x89PNG not json", "Ensure that input is a valid JSON formatted string"),
    }
    for case, (body, reason) in cases.items():
        t0 = time.perf_counter()
        status, answer = post(url, body)
        assert status == 400, (case, status, answer)
        assert reason in answer["message"], (case, answer["message"][-500:])
        assert len(json.dumps(answer)) < 20_000, case  # a 50 MB input is not echoed back
        assert time.perf_counter() - t0 < 30, case
        status, answer = post(url, good)  # still serving
        assert status == 200 and len(answer["predictions"]["scores"]) == 1, (case, answer)
    assert "Traceback" not in served["log"].read_text().split("Application startup complete")[-1]


def test_request_images_accepts_every_documented_form_and_refuses_the_rest(demo_root, monkeypatch):
    """The input parsing of the served model without a server: encoded bytes, base64 text, uint8 arrays (batch,
    one image, grey), and the limits."""
    from mlflow.exceptions import MlflowException

    from adcore.data.mvtec import read_image
    from components.pyfunc_model import request_images

    png = demo_root / "tile" / "test" / "good" / "000.png"
    image = read_image(png)
    for given in ([png.read_bytes()], np.asarray([b64(png)], dtype=object), image, image[None], image[..., 0]):
        got = request_images(given)
        assert len(got) == 1 and got[0].dtype == np.uint8 and got[0].shape == image.shape
        np.testing.assert_array_equal(got[0], image if np.ndim(given) != 2 else np.repeat(image[..., :1], 3, 2))
    monkeypatch.setenv("ADCORE_SERVING_MAX_IMAGES", "2")
    with pytest.raises(MlflowException, match=r"3 images in one request, more than 2 \(ADCORE_SERVING_MAX_IMAGES\)"):
        request_images(np.stack([image] * 3))
    monkeypatch.setenv("ADCORE_SERVING_MAX_IMAGES", "many")
    with pytest.raises(MlflowException, match="ADCORE_SERVING_MAX_IMAGES: expected a positive number, got 'many'"):
        request_images(image)
    monkeypatch.delenv("ADCORE_SERVING_MAX_IMAGES")
    with pytest.raises(MlflowException, match="expected uint8 pixel values") as info:
        request_images(image.astype(np.float32))
    assert info.value.get_http_status_code() == 400
