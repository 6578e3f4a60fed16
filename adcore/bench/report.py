"""What the bench reports: the markdown table and page, and the checks that the methods were compared fairly."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from adcore.report import format_number, markdown_table

PEAK_MEMORY_NOTE = (
    "peak_rss_mb is ru_maxrss of a fresh subprocess per (method, category) run: it includes the interpreter and "
    "torch baseline (rss_after_import_mb) and excludes DataLoader worker processes (num_workers > 0)."
)
TIMING_NOTE = (
    "per image on preprocessed tensors (decoding excluded); after warm-up, paired rounds per batch size each time "
    "the backbone-only forward (the floor) and predict on the same batch, the order alternating; reported: the "
    "median, the interquartile range (_iqr) and the fastest round (_min); x_floor = median of the per-round ratios "
    "predict / floor; *_cpu_* = the same with process CPU time (all threads of the run), robust to other load; "
    "timing.json in each run folder holds the rounds"
)
EXPORT_NOTE = (
    "exported inference (adcore export, whole graph, batch 1) on the CPU: ms per image, median (IQR) of rounds that "
    "time the floor (backbone alone), torch predict, onnxruntime and OpenVINO on the same image, the order rotating; "
    "every runtime with torch's thread count; CPU ms = the same with this process's CPU time (all threads), robust to "
    "other load; x floor = median per-round ratio to the floor; max rel diff = largest "
    "|exported - predict| of the maps over the timing images, divided by the range of predict's maps"
)
#: (row key, header) of the export table; the time keys get their IQR in brackets.
EXPORT_COLUMNS = (("export_torch_ms_per_image_b1", "torch ms/img"),
                  ("export_onnxruntime_ms_per_image_b1", "onnxruntime ms/img"),
                  ("export_openvino_ms_per_image_b1", "OpenVINO ms/img"),
                  ("export_floor_ms_per_image_b1", "floor ms/img"),
                  ("export_torch_cpu_ms_per_image_b1", "torch CPU ms"),
                  ("export_onnxruntime_cpu_ms_per_image_b1", "ORT CPU ms"),
                  ("export_openvino_cpu_ms_per_image_b1", "OV CPU ms"),
                  ("export_floor_cpu_ms_per_image_b1", "floor CPU ms"),
                  ("export_torch_x_floor_b1", "torch x floor"), ("export_onnxruntime_x_floor_b1", "ORT x floor"),
                  ("export_openvino_x_floor_b1", "OV x floor"),
                  ("export_onnxruntime_max_rel_diff_maps", "ORT max rel diff"),
                  ("export_openvino_max_rel_diff_maps", "OV max rel diff"), ("export_seconds", "export s"))
BELOW_FLOOR_NOTE = "x floor < 1: timing noise, rerun on a quiet machine"
#: Four of adcore.metrics.METRIC_KEYS, with their headers; every metric is in bench.json.
TABLE_METRICS = (("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC"), ("pixel_aupro", "AUPRO@0.3"),
                 ("pixel_ap", "pixel AP"))


def consistency_checks(rows: list[dict]) -> dict[str, Any]:
    """Per category: do all methods share the seed, the train/val split and the backbone? Differences are warnings."""
    out: dict[str, Any] = {"warnings": []}
    for category in sorted({r["category"] for r in rows}):
        ok = [r for r in rows if r["category"] == category and r.get("status") == "ok"]
        facts = {key: sorted({str(r.get(key)) for r in ok}) for key in ("seed", "split_sha256", "backbone")}
        out[category] = facts
        for key, values in facts.items():
            if len(values) > 1:
                out["warnings"].append(f"{category}: methods differ in {key}: {values}")
    return out


def below_floor(rows: list[dict], batch_sizes: Sequence[int]) -> list[str]:
    """The runs whose x floor came out below 1 (impossible: predict includes the floor), one line each."""
    return [f"{r['method']} on {r['category']}, batch {b}: x floor {r[f'x_floor_b{b}']:.2f}"
            for r in rows if r.get("status") == "ok" for b in batch_sizes if r.get(f"x_floor_b{b}_below_1")]


def bench_table(rows: list[dict], batch_sizes: Sequence[int]) -> str:
    """One line per run; time cells are ``median (IQR)``, an x floor below 1 is marked ``*``."""
    columns = [("category", "category"), ("method", "method"), *TABLE_METRICS, ("input_size", "input px"),
               ("train_seconds", "train s")]
    for b in batch_sizes:
        columns += [(f"ms_per_image_b{b}", f"ms/img b{b} (IQR)"), (f"backbone_ms_per_image_b{b}", f"floor b{b} (IQR)"),
                    (f"x_floor_b{b}", f"x floor b{b}"), (f"x_floor_cpu_b{b}", f"x floor CPU b{b}")]
    columns += [("epoch_over_backbone_pass", "epoch / backbone pass"), ("peak_rss_mb", "peak RSS MB"),
                ("model_mb", "model MB")]
    return markdown_table([_cells(r, batch_sizes, [k for k, _ in columns]) for r in rows], columns)


def export_table(rows: list[dict]) -> str | None:
    """torch / onnxruntime / OpenVINO / floor per run (batch 1, CPU); None when no run was exported."""
    exported = [r for r in rows if r.get("status") == "ok" and
                (r.get("export_floor_ms_per_image_b1") is not None or r.get("export_error"))]
    if not exported:
        return None
    columns = [("category", "category"), ("method", "method"), *EXPORT_COLUMNS]
    lines = []
    for r in exported:
        if r.get("export_error"):
            lines.append({**{k: "" for k, _ in columns}, "category": r["category"], "method": r["method"],
                          EXPORT_COLUMNS[0][0]: f"export failed: {r['export_error']}"})
            continue
        cells = {"category": r["category"], "method": r["method"]}
        for key, _ in EXPORT_COLUMNS:
            value = r.get(key)
            spec = ".1e" if "max_rel_diff" in key else ".2f" if "x_floor" in key else ".1f" if key == "export_seconds" \
                else ""
            cells[key] = _number(value, spec)
            if key.endswith("_ms_per_image_b1") and r.get(f"{key}_iqr") is not None:
                cells[key] += f" ({_number(r[f'{key}_iqr'])})"
        lines.append(cells)
    return markdown_table(lines, columns)


def _cells(row: dict, batch_sizes: Sequence[int], keys: list[str]) -> dict[str, str]:
    if row.get("status") != "ok":
        return {**{k: "" for k in keys}, "category": row["category"], "method": row["method"], keys[2]: "failed"}
    cells = {k: _number(row.get(k), _float_spec(k)) for k in keys}
    for b in batch_sizes:
        for key in (f"ms_per_image_b{b}", f"backbone_ms_per_image_b{b}"):
            if row.get(key) is not None:
                cells[key] += f" ({_number(row.get(f'{key}_iqr'))})"
        if row.get(f"x_floor_b{b}_below_1"):
            cells[f"x_floor_b{b}"] += "*"
    return cells


def _float_spec(key: str) -> str:
    if key in dict(TABLE_METRICS):
        return ".3f"
    return ".2f" if key.startswith(("x_floor", "epoch_over")) else ""


def _number(value: Any, spec: str = "") -> str:
    if value is None:
        return "n/a"
    return format(value, spec) if spec and isinstance(value, float) else format_number(value)


def markdown_report(report: dict) -> str:
    """bench.md: the command, the machine and its load, the table, how it was measured, failures and warnings."""
    env = report["environment"]
    rows = report["rows"]
    flagged = below_floor(rows, report["batch_sizes"])
    out = [
        "# adcore bench",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Started {report['started']}, "
        + (f"finished {report['finished']}." if report.get("complete") else
           f"INCOMPLETE (last update {report.get('last_update')}).") + f" Machine: {env['cpu_count']} CPU cores, "
        f"torch {env['torch']} ({env['torch_threads']} threads), {env['platform']}; GPU: {env['cuda']}.",
        f"Load average (1, 5, 15 min) before: {report['load_average_before']}, after: "
        f"{report['load_average_after']}" + (" - the machine was shared with other work, timings are noisy."
                                             if contended(report) else "."),
        "",
        bench_table(rows, report["batch_sizes"]),
    ]
    if flagged:
        out += ["", f"\\* {BELOW_FLOOR_NOTE}."]
    out += [
        "",
        f"Times: {TIMING_NOTE}; {report['timing_rounds']} rounds over the first {report['n_timing_images']} test "
        f"images. `floor` is the frozen backbone's forward pass alone on the same tensors in the same process. "
        f"Feature cache: {report['feature_cache']}. {PEAK_MEMORY_NOTE}",
    ]
    exports = export_table(rows)
    if exports is not None:
        out += ["", "Exported inference, batch 1, CPU:", "", exports, "", f"Export times: {EXPORT_NOTE}."]
    failed = [r for r in rows if r.get("status") != "ok"]
    if failed:
        out += ["", "Failed runs:"] + [f"- {r['method']} on {r['category']}: "
                                       f"{(r.get('error') or '?').splitlines()[-1]}" for r in failed]
    warnings = report["consistency"]["warnings"] + [f"{line} ({BELOW_FLOOR_NOTE})" for line in flagged]
    if warnings:
        out += ["", "Warnings:"] + [f"- {w}" for w in warnings]
    return "\n".join(out)


def contended(report: dict) -> bool:
    """Was the load average above the number of cores before or after the bench?"""
    cores = report["environment"]["cpu_count"] or 1
    loads = [report["load_average_before"], report["load_average_after"]]
    return any(la and la[0] > cores for la in loads)
