"""Thin adapters between the steps in ``components/`` and the two orchestrators (kfp and dvc).

Nothing here trains or scores: each function calls the ``components`` step and adds only what the orchestration
needs. Four things are added:

- ``source_fingerprint``: the version of the data source (S3 ETags, DVC md5s, local size+mtime) without downloading,
  so the cached kfp fetch step re-runs exactly when the data changed (kfp caches on inputs, not on S3 contents);
- ``extract_category_features``: features once per category for *every* method's backbone and transform;
- ``train_step``: training over a private hard-linked copy of the feature cache, because a method may add entries
  (CFA's crops) and an orchestrator's input (a kfp input artifact, a dvc out) must never change after it is written;
- ``summary_markdown`` / ``log_summary`` / ``report``: the table of all results, for kfp, MLflow and dvc.

``python -m pipelines.steps <step>`` is what dvc.yaml runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

SUMMARY_COLUMNS = ("category", "method", "image_auroc", "pixel_auroc", "pixel_aupro", "image_f1_max",
                   "ms_per_image", "decision", "version")


# --------------------------------------------------------------------------------------------- fetch


def source_fingerprint(source: str, repo: str = "", rev: str = "") -> str:
    """sha256 over (path, version) of every file of the source: changes whenever any file changes."""
    from components.fetch import list_source

    items = list_source(source, repo, rev)
    digest = hashlib.sha256(f"{source}|{repo}|{rev}".encode())
    for item in sorted(items, key=lambda it: it.rel):
        digest.update(f"\n{item.rel}\t{item.version}".encode())
    return digest.hexdigest()


def category_versions(source: str, categories: Sequence[str], repo: str = "", rev: str = "") -> list[dict[str, str]]:
    """``[{category, fingerprint}]``: one listing of the source, one fingerprint per requested category, so that a
    change in one category re-fetches (and retrains) only that one. DataError when a category has no files."""
    from components.fetch import list_source, select_categories

    items = list_source(source, repo, rev)
    out = []
    for category in categories:
        digest = hashlib.sha256(f"{source}|{repo}|{rev}|{category}".encode())
        for item in sorted(select_categories(items, [category], source), key=lambda it: it.rel):
            digest.update(f"\n{item.rel}\t{item.version}".encode())
        out.append({"category": category, "fingerprint": digest.hexdigest()})
    return out


def prepare_tracking(experiment: str = "", tracking_uri: str = "", pipeline_run: str = "") -> str:
    """Create the MLflow store (schema migrations of a new sqlite file), the experiment and the parent run of
    ``pipeline_run`` once, before the parallel steps: concurrent first uses race on them. Returns the experiment
    id."""
    from components import tracking

    uri = tracking.tracking_uri(tracking_uri)
    tracking.check_reachable(uri)
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    name = tracking.experiment_name(experiment)
    try:
        exp = client.get_experiment_by_name(name)
        exp_id = exp.experiment_id if exp is not None else client.create_experiment(name)
        if pipeline_run:
            tracking.ensure_parent_run(client, exp_id, pipeline_run)
        return exp_id
    except MlflowException as exc:
        from components.secrets import mask_secrets

        raise tracking.TrackingError(mask_secrets(f"MLflow tracking at {uri} failed: {exc.message}")) from None


# --------------------------------------------------------------------------------------------- features


def extract_category_features(data_root: str, category: str, cache_dir: str, methods: Sequence[str], *,
                              profile: str = "", params: str = "", overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Fill ``cache_dir`` with the features of ``category`` for each method (methods sharing a key share an entry)."""
    from components.features import extract_features

    entries: dict[str, list[str]] = {}
    for method in methods:
        result = extract_features(data_root, category, cache_dir, method=method, profile=profile, params=params,
                                  overrides=list(overrides))
        entries.setdefault(result["key"], []).append(method)
    return {"cache_dir": str(cache_dir), "category": category, "entries": entries}


# --------------------------------------------------------------------------------------------- train


def link_tree(src: str | Path, dst: str | Path) -> None:
    """Copy a folder as hard links (a copy where linking is impossible): cheap, and the source stays untouched
    because the feature cache only ever adds entries (written to temporary folders, then renamed)."""

    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link, dirs_exist_ok=True)


def train_step(method: str, data_root: str, category: str, output_dir: str, *, cache_dir: str = "",
               **kwargs: Any) -> dict[str, Any]:
    """``components.train.train`` over a private copy of ``cache_dir`` (see the module docstring)."""
    from components.train import train

    if not cache_dir or not Path(cache_dir).is_dir():
        return train(method, data_root, category, output_dir, cache_dir=cache_dir, **kwargs)
    with tempfile.TemporaryDirectory(prefix="adcore-cache-") as scratch:
        link_tree(cache_dir, scratch)
        return train(method, data_root, category, output_dir, cache_dir=scratch, **kwargs)


def fetch_weights(uri: str, output_dir: str | Path) -> list[str]:
    """Copy the backbone weight files under ``uri`` (``s3://bucket/prefix`` or a folder; files named after the
    backbone, e.g. ``wide_resnet50_2.tv_in1k.pth``) into ``output_dir``; nothing for an empty ``uri``."""
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    if not uri:
        return []
    from components.fetch import list_source

    names = []
    for item in list_source(uri):
        if "/" not in item.rel and item.rel.endswith((".pth", ".pt", ".safetensors")):
            item.download_verified(Path(output_dir) / item.rel)
            names.append(item.rel)
    return sorted(names)


def weights_overrides(method: str, profile: str, overrides: Sequence[str], weights_dir: str | Path) -> list[str]:
    """``overrides`` plus ``backbone.weights=<file>`` when ``weights_dir`` holds a file named after the backbone of
    ``method`` in ``profile`` (weights fetched once per night instead of from the hub in every pod)."""
    from adcore.methods import resolve_settings

    name = resolve_settings(method, profile or None, None, list(overrides)).backbone.name
    found = sorted(p for p in Path(weights_dir).glob(f"{name}.*") if p.suffix in (".pth", ".pt", ".safetensors"))
    return [*overrides, f"backbone.weights={found[0]}"] if found else list(overrides)


class CategoryDataOnDemand(os.PathLike):
    """A dataset path that is downloaded only when something opens it: the register step needs the category's
    test split only to re-evaluate a champion scored on another split, which most nights it does not."""

    def __init__(self, dataset_uri: str, category: str, scratch: str | Path) -> None:
        self.dataset_uri, self.category, self.scratch = dataset_uri, category, Path(scratch)
        self.path: Path | None = None

    def __fspath__(self) -> str:
        if self.path is None:
            from components.fetch import fetch_dataset

            # KFP names artifacts in its own MinIO minio://bucket/key: the same S3 API (endpoint: AWS_ENDPOINT_URL)
            source = "s3://" + self.dataset_uri[len("minio://"):] if self.dataset_uri.startswith("minio://") \
                else self.dataset_uri
            fetch_dataset(source, str(self.scratch), categories=[self.category])
            self.path = self.scratch
        return str(self.path)

    __str__ = __fspath__

    def __bool__(self) -> bool:
        return True


# --------------------------------------------------------------------------------------------- summary


def _flatten(items: Iterable[Any]) -> list[Any]:
    """kfp collects nested ParallelFor outputs as nested lists (locally) or flat (on some backends)."""
    out: list[Any] = []
    for item in items:
        if isinstance(item, (list, tuple)):
            out.extend(_flatten(item))
        elif isinstance(item, str):
            out.append(json.loads(item))
        else:
            out.append(item)
    return out


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def summary_markdown(results: Iterable[Any], title: str = "adcore results") -> tuple[str, list[dict[str, Any]]]:
    """A markdown table, one row per (category, method), sorted; returns (markdown, rows)."""
    from adcore.report import markdown_table

    rows = sorted(_flatten(results), key=lambda r: (str(r.get("category")), str(r.get("method"))))
    columns = [c for c in SUMMARY_COLUMNS if any(r.get(c) not in (None, "") for r in rows)]
    cells = [{c: None if r.get(c) == "" else r.get(c) for c in columns} for r in rows]
    return f"# {title}\n\n{markdown_table(cells, columns, _cell, missing='-')}\n", rows


def log_summary(markdown: str, rows: list[dict[str, Any]], *, experiment: str = "", tracking_uri: str = "",
                run_name: str = "summary", pipeline_run: str = "") -> str:
    """Log the table to MLflow (summary.md, results.json): on the parent run of ``pipeline_run`` when given, else
    as a run of its own; returns the run id."""
    from adcore.metrics import METRIC_KEYS
    from components import tracking

    if pipeline_run:
        return tracking.log_pipeline_summary(pipeline_run, markdown, rows, experiment=experiment, uri=tracking_uri)
    with tracking.open_run("all", "summary", experiment=experiment, uri=tracking_uri) as run:
        run.set_tags({"mlflow.runName": run_name, "adcore.kind": "summary"})
        run.client.log_text(run.run_id, markdown, "summary.md")
        run.log_dict(rows, "results.json")
        for row in rows:
            prefix = f"{row.get('category')}.{row.get('method')}"
            run.log_metrics({f"{prefix}.{k}": row.get(k) for k in METRIC_KEYS})
        return run.run_id


def report(metrics_files: Sequence[str], markdown_out: str, json_out: str, plot_out: str = "") -> dict[str, Any]:
    """dvc's report stage: one table, one metrics file (category -> method -> metric) and one plot table (a row
    per category/method) from the evaluate outputs."""
    from adcore.io import atomic_write_json, atomic_write_text
    from adcore.metrics import METRIC_KEYS

    results = []
    for path in metrics_files:
        metrics = json.loads(Path(path).read_text())
        results.append({k: metrics.get(k) for k in (*SUMMARY_COLUMNS, "category", "method")})
    markdown, rows = summary_markdown(results)
    keep = (*METRIC_KEYS, "ms_per_image")
    nested: dict[str, dict[str, dict[str, Any]]] = {}
    for path in metrics_files:
        metrics = json.loads(Path(path).read_text())
        nested.setdefault(metrics["category"], {})[metrics["method"]] = {
            k: metrics[k] for k in keep if isinstance(metrics.get(k), (int, float))}
    Path(markdown_out).parent.mkdir(parents=True, exist_ok=True)
    Path(json_out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(markdown_out), markdown)
    atomic_write_json(Path(json_out), nested)
    if plot_out:
        Path(plot_out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(Path(plot_out), [{"run": f"{cat}/{method}", **values} for cat, methods in
                                           sorted(nested.items()) for method, values in sorted(methods.items())])
    return {"markdown": markdown_out, "metrics": json_out, "rows": len(rows)}


# --------------------------------------------------------------------------------------------- CLI (dvc)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipelines.steps", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)

    p = sub.add_parser("demo-data", help="the demo dataset (adcore.data.demo) with the sizes of params.yaml")
    p.add_argument("output")
    p.add_argument("--params", default="", help="take the settings from the `demo` section of this params.yaml")
    p.add_argument("--categories", nargs="+", default=["tile", "widget"])
    p.add_argument("--n-train", type=int, default=40)
    p.add_argument("--n-test-good", type=int, default=10)
    p.add_argument("--n-test-defect", type=int, default=6)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("features", help="features of one category for every listed method")
    p.add_argument("data_root")
    p.add_argument("category")
    p.add_argument("cache_dir")
    p.add_argument("--methods", nargs="+", default=None, help="default: the `methods` list of --params")
    p.add_argument("--params", default="")

    p = sub.add_parser("train", help="components.train over a private copy of the feature cache")
    p.add_argument("method")
    p.add_argument("data_root")
    p.add_argument("category")
    p.add_argument("output_dir")
    p.add_argument("--cache-dir", default="")
    p.add_argument("--params", default="")
    p.add_argument("--experiment", default="")
    p.add_argument("--no-track", dest="track", action="store_false")

    p = sub.add_parser("report", help="table and metrics of all evaluations")
    p.add_argument("metrics", nargs="+")
    p.add_argument("--markdown", required=True)
    p.add_argument("--json", required=True)
    p.add_argument("--plot", default="", help="rows for `dvc plots` (x: run, y: a metric)")
    return parser


def _params_section(path: str, key: str) -> Any:
    """dvc cannot put a list into a command line: the steps read lists from params.yaml themselves."""
    from adcore.config import load_params

    return load_params(path).get(key) if path else None


def main(argv: Sequence[str] | None = None) -> int:
    from adcore.errors import AdcoreError, ConfigError

    args = _parser().parse_args(argv)
    try:
        if args.step == "demo-data":
            from adcore.data.demo import generate_demo_dataset

            for key, value in (_params_section(args.params, "demo") or {}).items():
                if key not in vars(args) or key in ("output", "params"):
                    raise ConfigError(f"{args.params}: demo.{key}: unknown setting")
                setattr(args, key, value)
            out = generate_demo_dataset(args.output, categories=args.categories, n_train=args.n_train,
                                        n_test_good=args.n_test_good, n_test_defect=args.n_test_defect,
                                        image_size=args.image_size, seed=args.seed)
            result: dict[str, Any] = {"output": str(out)}
        elif args.step == "features":
            methods = args.methods or _params_section(args.params, "methods")
            if not methods:
                raise ConfigError("features: give --methods or a params file with a `methods` list")
            result = extract_category_features(args.data_root, args.category, args.cache_dir, methods,
                                               params=args.params)
        elif args.step == "train":
            with tempfile.TemporaryDirectory(prefix="adcore-ckpt-") as ckpt:
                result = train_step(args.method, args.data_root, args.category, args.output_dir,
                                    cache_dir=args.cache_dir, params=args.params, experiment=args.experiment,
                                    track=args.track, checkpoint_dir=ckpt)
        else:
            result = report(args.metrics, args.markdown, args.json, args.plot)
    except AdcoreError as exc:
        from components.secrets import mask_secrets

        print(mask_secrets(f"error: {exc}"), file=sys.stderr)  # a URL in a message may carry a password or token
        return 2
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
