"""Register a trained model in the MLflow registry; promote it to ``champion`` only on evidence (components.gate).

One registered model per (category, method), named ``<prefix>-<category>-<method>``. Each new model becomes a
version with the alias ``challenger``. The gate compares it with the champion on the same test images: the
challenger's per-image scores (``scores.csv`` beside its metrics) against the champion's, from the champion's run
when it was evaluated on the same test split (same content fingerprint), else from re-evaluating the champion on
this split with this model's seen anomalies excluded (given ``data_root``; without it nothing is promoted and the
reason says "re-evaluate required"). A paired bootstrap gives the confidence interval of the difference; the
challenger passes when its lower bound clears the margin, no other metric falls by more than the tolerance and the
absolute floor is met. In ``auto`` mode a passing challenger becomes ``champion`` (the version records the one it
replaced, for :func:`rollback`); in ``manual`` mode it becomes ``candidate`` and a person promotes it with
:func:`promote_version` (``adcore-step promote``). The decision, its reasons and interval are tags on the version
and the run, and the version's model card (components.model_card) says it all in one page.

The metrics file is not trusted: it must state the content hash of ``model_dir`` (``model_sha256``, written by
components.evaluate; a file for another model is refused, one without the hash is registered but never promoted)
and every metric must be null or a number in [0, 1]. A champion whose metric tag is missing (or not in [0, 1]) is
re-evaluated on this test split when ``data_root`` is given.

Re-running is harmless: a model already registered (same content hash) is not logged again, and a version that is
already the champion is left as it is.
"""

from __future__ import annotations

import json
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import adcore
from adcore.errors import ConfigError, DataError
from adcore.io import read_model_meta
from adcore.metrics import METRIC_KEYS
from adcore.predict import model_threshold
from components import tracking as _tracking
from components.gate import (
    GateSettings,
    Interval,
    decide,
    metric_intervals,
    number,
    pair_scores,
    paired_interval,
    read_scores,
)
from components.pyfunc_model import serving_signature
from components.tracking import MODEL_SHA_TAG, TrackingError, model_fingerprint, open_run

PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
CHAMPION, CHALLENGER, CANDIDATE = "champion", "challenger", "candidate"
PREVIOUS_TAG = "champion.previous"  # on a champion: the version it replaced ("none" for the first)
REQUIREMENTS = ("torch", "torchvision", "timm", "numpy", "safetensors", "pillow", "pydantic", "pyyaml",
                "scikit-learn", "scipy", "mlflow")


def registered_name(prefix: str, category: str, method: str) -> str:
    name = f"{prefix}-{category}-{method}" if prefix else f"{category}-{method}"
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ConfigError(f"registered model name {name!r}: use letters, digits, '-', '_' and '.' only")
    return name


def _number(value: Any) -> float | None:
    return number(value)


def _requirements() -> list[str]:
    """What the logged model needs besides its own copy of adcore (code_paths): adcore's runtime dependencies and
    mlflow, each pinned to the version installed here (the one the model was trained and checked with)."""
    from importlib import metadata

    from packaging.requirements import Requirement

    try:
        packages = [Requirement(r).name for r in metadata.requires("adcore") or [] if "extra ==" not in r]
    except metadata.PackageNotFoundError:  # run from a checkout that is not installed
        packages = list(REQUIREMENTS)
    out = []
    for package in dict.fromkeys([*packages, "mlflow"]):
        try:
            out.append(f"{package}=={metadata.version(package).split('+')[0]}")  # no local tag (+cu130)
        except metadata.PackageNotFoundError:
            pass
    return out


def _metrics_from_tags(tags: dict[str, str]) -> dict[str, float]:
    """The metric tags of a version; a value that is not a number in [0, 1] (a forgery) counts as missing."""
    out = {}
    for key, value in tags.items():
        number = _number(value)
        if key.startswith("metric.") and number is not None and 0.0 <= number <= 1.0:
            out[key[len("metric."):]] = number
    return out


def read_metrics(metrics_json: str | Path, model_dir: str | Path, sha: str) -> dict[str, Any]:
    """The evaluation metrics of ``model_dir``, checked before anything is registered.

    DataError (naming the file and the key) when the file is unreadable or not a JSON object, when it states the
    content hash of another model (``model_sha256``, written by components.evaluate), or when a metric of
    METRIC_KEYS is not null or a number in [0, 1]. A file without ``model_sha256`` is read but never promotes.
    """
    try:
        metrics = json.loads(Path(metrics_json).read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{metrics_json}: cannot read the evaluation metrics ({exc})") from None
    if not isinstance(metrics, dict):
        raise DataError(f"{metrics_json}: not a JSON object of evaluation metrics")
    stated = metrics.get("model_sha256")
    if stated is not None and stated != sha:
        raise DataError(f"{metrics_json}: model_sha256 {str(stated)[:16]}... is not the content hash of {model_dir} "
                        f"({sha[:16]}...): these metrics belong to another model; evaluate this model and register "
                        "it with its own metrics")
    for key in METRIC_KEYS:
        value = metrics.get(key)
        if value is None:
            continue
        number = _number(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
        if number is None or not 0.0 <= number <= 1.0:
            raise DataError(f"{metrics_json}: {key} = {value!r} is not a number in [0, 1] (or null); refused")
    return metrics


def _find_version(client, name: str, sha: str):
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None
    return next((v for v in versions if v.tags.get(MODEL_SHA_TAG) == sha), None)


def _champion(client, name: str):
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        return None
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(exc.error_code) or "not found" in str(exc).lower():
            return None
        raise


def _evaluate_scores(model_dir: str | Path, data_root: str, category: str, exclude: list[str],
                     tmp: Path) -> tuple[dict[str, Any], dict[str, tuple[int, float]]]:
    """Metrics and per-image scores of ``model_dir`` on ``data_root``'s test split less ``exclude``."""
    from adcore.evaluation import evaluate_model

    out = tmp / "eval" / "metrics.json"
    metrics = evaluate_model(model_dir, data_root, category, out, progress=False, exclude=exclude)
    return metrics, read_scores(out.with_name("scores.csv"))


def _reevaluate_champion(uri: str, name: str, version: str, data_root: str, category: str,
                         exclude: list[str]) -> tuple[dict[str, Any], dict[str, tuple[int, float]]]:
    """Download the champion's model directory from the registry and evaluate it on this test split, without
    the images ``exclude`` (the challenger's seen anomalies) as well as its own."""
    import mlflow

    with tempfile.TemporaryDirectory(prefix="adcore-champion-") as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=tmp,
                                                         tracking_uri=uri))
        found = [p.parent for p in local.rglob("model.json") if (p.parent / "model.safetensors").is_file()]
        if not found:
            raise DataError(f"models:/{name}/{version}: no adcore model directory among its artifacts")
        return _evaluate_scores(found[0], data_root, category, exclude, Path(tmp))


def _run_scores(client, run_id: str) -> dict[str, tuple[int, float]] | None:
    """The per-image scores an evaluation logged to ``run_id`` (evaluation/scores.csv), or None."""
    from mlflow.exceptions import MlflowException

    if not run_id:
        return None
    with tempfile.TemporaryDirectory(prefix="adcore-scores-") as tmp:
        try:
            path = client.download_artifacts(run_id, "evaluation/scores.csv", tmp)
        except (MlflowException, OSError):
            return None
        return read_scores(path)


def _compare(client, uri: str, name: str, champion, metrics: dict[str, Any], scores, gate: GateSettings,
             data_root: str, category: str, model_path: Path, label: str):
    """(challenger metrics, champion metrics, interval or None, reasons so far) on common test images."""
    champion_metrics: dict[str, Any] = _metrics_from_tags(champion.tags)
    champion_scores = None
    split = metrics.get("test_split_sha256")
    if not split or champion.tags.get("test_split_sha256") != split:
        done = f"{label} was re-evaluated on this test split"
        missing = f"{label} was evaluated on a different test split and no data_root was given to re-evaluate it"
    elif gate.metric not in champion_metrics:
        done = f"{label} had no valid metric.{gate.metric} tag and was re-evaluated on this test split"
        missing = (f"{label} has no valid metric.{gate.metric} tag and no data_root was given to re-evaluate it: "
                   "re-evaluate required (give data_root, --data-root)")
    else:
        champion_scores = _run_scores(client, champion.tags.get("run_id", ""))
        done = f"{label}'s run has no per-image scores (evaluation/scores.csv): it was re-evaluated on this test split"
        missing = (f"{label}'s run has no per-image scores (evaluation/scores.csv) and no data_root was given to "
                   "re-evaluate it: re-evaluate required (give data_root, --data-root)")
    reasons: list[str] = []
    if champion_scores is None:
        if not data_root:
            return metrics, {}, None, [missing]
        seen = list(metrics.get("excluded_seen_anomalies") or [])
        champion_metrics, champion_scores = _reevaluate_champion(uri, name, champion.version, data_root, category,
                                                                 seen)
        reasons.append(done)
        extra = sorted(set(champion_metrics.get("excluded_seen_anomalies") or []) - set(seen))
        if extra:  # the champion saw anomalies (PRN) this model did not: its metrics without them as well
            with tempfile.TemporaryDirectory(prefix="adcore-challenger-") as tmp:
                metrics, _ = _evaluate_scores(model_path, data_root, category, seen + extra, Path(tmp))
            reasons.append(f"both models were scored without the {len(seen) + len(extra)} anomalies either saw in "
                           "training")
    if scores is None:
        return metrics, champion_metrics, None, reasons + ["the challenger has no per-image scores (scores.csv "
                                                           "beside its metrics file)"]
    interval = paired_interval(*pair_scores(scores, champion_scores), gate)
    return metrics, champion_metrics, interval, reasons


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def register_model(model_dir: str, metrics_json: str, category: str, method: str, *, prefix: str = "adcore",
                   metric: str = "image_auroc", margin: float = 0.0, tolerance: float = 0.02, floor: float = 0.0,
                   resamples: int = 2000, mode: str = "auto", data_root: str = "", run_id: str = "",
                   experiment: str = "", tracking_uri: str = "") -> dict[str, Any]:
    """Log ``model_dir`` as a pyfunc, register it, alias it ``challenger`` and let the gate decide on ``champion``
    (``mode="manual"``: on ``candidate``).

    metrics_json: the evaluation output of this model (components.evaluate), with ``test_split_sha256`` and
    ``scores.csv`` beside it. Returns name, version, decision ("promoted", "candidate", "rejected" or
    "unchanged"), reasons, the interval of the difference and the champion version.
    """
    import mlflow

    gate = GateSettings(metric=metric, margin=margin, tolerance=tolerance, floor=floor, resamples=resamples,
                        mode=mode)
    model_path = Path(model_dir)
    if not (model_path / "model.json").is_file():
        raise DataError(f"{model_path}: not an adcore model directory (no model.json)")
    name = registered_name(prefix, category, method)
    sha = model_fingerprint(model_path)
    metrics = read_metrics(metrics_json, model_path, sha)  # before anything is written to the registry
    scores_csv = Path(metrics_json).with_name("scores.csv")
    scores = read_scores(scores_csv) if scores_csv.is_file() else None
    uri = _tracking.tracking_uri(tracking_uri)

    with open_run(category, method, run_id=run_id, model_sha256=sha, experiment=experiment, uri=uri,
                  saved=model_path) as run:
        client = run.client
        version = _find_version(client, name, sha)
        if version is None:
            mlflow.set_tracking_uri(uri)
            mlflow.set_registry_uri(uri)
            with mlflow.start_run(run_id=run.run_id), warnings.catch_warnings():
                # Deliberate: no input_example (it would pickle the weights); the explicit signature is given instead.
                warnings.filterwarnings("ignore", message=".*input example was not provided")
                # Self-contained: adcore itself travels as code, the threshold is recorded in the MLmodel file.
                info = mlflow.pyfunc.log_model(
                    name="model", python_model=str(PYFUNC_CODE), artifacts={"model_dir": str(model_path)},
                    code_paths=[str(Path(adcore.__file__).parent)], signature=serving_signature(),
                    pip_requirements=_requirements(),
                    metadata={"adcore_threshold": model_threshold(read_model_meta(model_path).get("normalizer")),
                              "adcore_version": adcore.__version__})
            tags = {MODEL_SHA_TAG: sha, "category": category, "method": method, "run_id": run.run_id,
                    "test_split_sha256": metrics.get("test_split_sha256", "")}
            tags.update({f"metric.{k}": str(metrics[k]) for k in METRIC_KEYS if _number(metrics.get(k)) is not None})
            version = mlflow.register_model(info.model_uri, name, tags=tags)
        client.set_registered_model_alias(name, CHALLENGER, version.version)
        if scores is not None and _run_scores(client, run.run_id) is None:
            # the scores a later challenger is paired with (the evaluate step logs them when it tracks)
            client.log_artifact(run.run_id, str(scores_csv), "evaluation")

        champion = _champion(client, name)
        result = {"name": name, "version": int(version.version), "run_id": run.run_id, "metric": metric,
                  "champion_uri": f"models:/{name}@{CHAMPION}"}
        if champion is not None and str(champion.version) == str(version.version):
            reasons = champion.tags.get("promotion.reasons", "already champion")
            return {**result, "decision": "unchanged", "promoted": True, "reasons": reasons,
                    "champion_version": int(champion.version)}

        label = f"champion v{champion.version}" if champion is not None else "champion"
        interval: Interval | None = None
        champion_metrics: dict[str, Any] | None = None
        compared = metrics
        reasons_pre: list[str] = []
        if champion is not None:
            compared, champion_metrics, interval, reasons_pre = _compare(
                client, uri, name, champion, metrics, scores, gate, data_root, category, model_path, label)
        passes, reasons = decide(compared, champion_metrics, interval, gate, champion_label=label)
        if passes and metrics.get("model_sha256") is None:
            passes = False
            reasons.append(f"{metrics_json} does not state the model_sha256 of the model it scores (components."
                           "evaluate writes it): unverified metrics never promote")
        reasons = reasons_pre + reasons
        if passes and gate.mode == "auto":
            decision = "promoted"
            client.set_registered_model_alias(name, CHAMPION, version.version)
            client.set_model_version_tag(name, version.version, PREVIOUS_TAG,
                                         str(champion.version) if champion is not None else "none")
        elif passes:
            decision = "candidate"
            client.set_registered_model_alias(name, CANDIDATE, version.version)
            reasons.append(f"manual mode: alias {CANDIDATE}; promote it with `adcore-step promote {category} "
                           f"{method} --version {version.version}`")
        else:
            decision = "rejected"
        tags = {"promotion.decision": decision, "promotion.reasons": "; ".join(reasons),
                **gate.as_tags(),
                "promotion.compared_with": str(champion.version) if champion is not None else "none",
                "promotion.time": _now()}
        if interval is not None:
            tags.update({"promotion.difference": f"{interval.difference:.6f}", "promotion.ci_low":
                         f"{interval.low:.6f}", "promotion.ci_high": f"{interval.high:.6f}",
                         "promotion.n_images": str(interval.n_images)})
        for key, value in tags.items():
            client.set_model_version_tag(name, version.version, key, value)
        run.set_tags({**tags, "registered_model": name, "registered_version": str(version.version)})
        card = _log_model_card(client, run.run_id, name, version.version, category, method, metrics, scores, gate,
                               decision, reasons, interval, tags["promotion.compared_with"], model_path,
                               Path(metrics_json).parent)
        return {**result, "decision": decision, "promoted": decision == "promoted", "reasons": "; ".join(reasons),
                "interval": None if interval is None else [interval.difference, interval.low, interval.high],
                "model_card": card,
                "champion_version": int(version.version) if decision == "promoted" else
                (int(champion.version) if champion is not None else None)}


def _log_model_card(client, run_id: str, name: str, version: str, category: str, method: str,
                    metrics: dict[str, Any], scores, gate: GateSettings, decision: str, reasons: list[str],
                    interval: Interval | None, compared_with: str, model_path: Path, evaluation_dir: Path) -> str:
    from components.model_card import card_pictures, log_card, render

    tags = client.get_run(run_id).data.tags
    intervals = metric_intervals(scores, gate.resamples, gate.seed, gate.confidence) if scores else {}
    pictures = card_pictures(evaluation_dir)
    markdown = render(name=name, version=version, category=category, method=method, run_id=run_id,
                      metrics=metrics, intervals=intervals, gate=gate, decision=decision, reasons=reasons,
                      interval=interval, compared_with=compared_with,
                      config=read_model_meta(model_path).get("config", {}),
                      dataset={k: tags.get(k, "") for k in ("dataset_sha256", "dataset_source")},
                      git_commit=tags.get(_tracking.GIT_COMMIT_TAG, ""),
                      pictures=[f"pictures/{p.name}" for p in pictures])
    return log_card(client, run_id, name, version, markdown, pictures)


# --------------------------------------------------------------------------------------------- by hand


def _registry(uri: str):
    uri = _tracking.tracking_uri(uri)
    _tracking.check_reachable(uri)
    return _tracking._client(uri)


def _version(client, name: str, version: int | str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, str(version))
    except MlflowException:
        raise DataError(f"registered model {name} has no version {version}") from None


def promote_version(category: str, method: str, version: int, *, prefix: str = "adcore", reason: str = "",
                    tracking_uri: str = "") -> dict[str, Any]:
    """Make ``version`` the champion by hand (manual mode: a person read the candidate's model card)."""
    from mlflow.exceptions import MlflowException

    name = registered_name(prefix, category, method)
    try:
        client = _registry(tracking_uri)
        target = _version(client, name, version)
        champion = _champion(client, name)
        if champion is not None and str(champion.version) == str(target.version):
            return {"name": name, "champion_version": int(target.version), "decision": "unchanged"}
        client.set_registered_model_alias(name, CHAMPION, target.version)
        tags = {PREVIOUS_TAG: str(champion.version) if champion is not None else "none",
                "promotion.decision": "promoted", "promotion.by": _user(), "promotion.time": _now(),
                "promotion.manual_reason": reason or "promoted by hand"}
        for key, value in tags.items():
            client.set_model_version_tag(name, target.version, key, value)
        if target.aliases and CANDIDATE in target.aliases:
            client.delete_registered_model_alias(name, CANDIDATE)
    except MlflowException as exc:
        raise TrackingError(f"MLflow registry at {_tracking.tracking_uri(tracking_uri)} failed: {exc.message}") \
            from None
    return {"name": name, "champion_version": int(target.version), "decision": "promoted",
            "previous_champion": tags[PREVIOUS_TAG]}


def rollback(category: str, method: str, *, reason: str, prefix: str = "adcore",
             tracking_uri: str = "") -> dict[str, Any]:
    """Move ``champion`` back to the version it replaced and record why (tags on both versions and the model)."""
    from mlflow.exceptions import MlflowException

    if not reason.strip():
        raise ConfigError("rollback --reason: say why the champion is rolled back (it is recorded in the registry)")
    name = registered_name(prefix, category, method)
    try:
        client = _registry(tracking_uri)
        current = _champion(client, name)
        if current is None:
            raise DataError(f"registered model {name} has no champion to roll back")
        previous = current.tags.get(PREVIOUS_TAG, "")
        if not previous or previous == "none":
            raise DataError(f"{name} v{current.version} is the first champion (no {PREVIOUS_TAG} tag): there is "
                            "nothing to roll back to; promote a version with `adcore-step promote`")
        _version(client, name, previous)
        client.set_registered_model_alias(name, CHAMPION, previous)
        when, who = _now(), _user()
        for key, value in {"rollback.reason": reason, "rollback.time": when, "rollback.by": who,
                           "rollback.to": previous}.items():
            client.set_model_version_tag(name, current.version, key, value)
        client.set_model_version_tag(name, previous, "rollback.restored_from", str(current.version))
        client.set_registered_model_tag(name, "last_rollback", f"v{current.version} -> v{previous} at {when} by "
                                                                f"{who}: {reason}"[:5000])
    except MlflowException as exc:
        raise TrackingError(f"MLflow registry at {_tracking.tracking_uri(tracking_uri)} failed: {exc.message}") \
            from None
    return {"name": name, "champion_version": int(previous), "rolled_back": int(current.version), "reason": reason}


__all__ = ["promote_version", "register_model", "registered_name", "rollback", "TrackingError"]
