"""Profile one method's ``predict``: per-stage times and the top operators (torch.profiler) or functions (cProfile).

Stages, per image, on preprocessed tensors (decoding excluded):
  backbone     time inside the frozen backbone's forward (measured with forward hooks during predict_raw)
  head         predict_raw minus backbone: the method's own work (memory search, student, decoder, ...)
  postprocess  upsample + Gaussian blur of the raw maps (adcore.postprocess.anomaly_maps_to_input), also split
  other        predict minus predict_raw minus postprocess: image scores, copies to the CPU

Use a trained model directory (e.g. one written by ``adcore bench`` under runs/<category>/<method>/model) or let the
script train one with --method (cpu profile, plus any --set overrides)::

    python benchmarks/profile_inference.py --model runs/bench/runs/pcb/patchcore/model \\
        --data-root ../shared/data --category pcb --batch-size 8 --n-images 32
    python benchmarks/profile_inference.py --method cfa --data-root ../shared/data --category pcb --profiler cprofile

The numbers are only as quiet as the machine: note the load average printed first.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from adcore.bench import load_timing_images  # noqa: E402
from adcore.methods import load_model  # noqa: E402
from adcore.postprocess import anomaly_maps_to_input, gaussian_blur, upsample  # noqa: E402

#: the clock of the stage times: wall (perf_counter) or this process's CPU time (--clock cpu), which other load on
#: a shared machine barely changes; with one torch thread CPU time equals compute time
CLOCK = time.perf_counter


class BackboneTimer:
    """Accumulates wall time spent inside ``module.forward`` (forward pre/post hooks)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.total = 0.0
        self._t0 = 0.0
        self._handles = [module.register_forward_pre_hook(self._pre), module.register_forward_hook(self._post)]

    def _pre(self, *_):
        self._t0 = CLOCK()

    def _post(self, *_):
        self.total += CLOCK() - self._t0

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def stage_times(model, images: torch.Tensor, batch_size: int, repeats: int = 1) -> dict[str, float]:
    """Median per-image milliseconds of each stage over the full batches of ``images``."""
    sigma = model.output_blur_sigma()
    size = tuple(images.shape[-2:])
    n = (len(images) // batch_size) * batch_size
    batches = [images[i:i + batch_size].to(model.device) for i in range(0, n, batch_size)] * repeats
    model.predict(batches[0])  # warm-up
    rec: dict[str, list[float]] = {k: [] for k in ("predict", "predict_raw", "backbone", "backbone_alone",
                                                   "upsample", "blur", "postprocess")}
    timer = BackboneTimer(model.backbone)
    try:
        for x in batches:
            t0 = CLOCK()
            model.predict(x)
            rec["predict"].append(CLOCK() - t0)
            timer.total = 0.0
            with torch.inference_mode():
                t0 = CLOCK()
                raw = model.predict_raw(x)
                rec["predict_raw"].append(CLOCK() - t0)
                rec["backbone"].append(timer.total)
                t0 = CLOCK()
                model.backbone(x)
                rec["backbone_alone"].append(CLOCK() - t0)
                maps = raw.maps.float()
                t0 = CLOCK()
                up = upsample(maps, size)
                rec["upsample"].append(CLOCK() - t0)
                t0 = CLOCK()
                gaussian_blur(up, sigma)
                rec["blur"].append(CLOCK() - t0)
                t0 = CLOCK()
                anomaly_maps_to_input(maps, size, sigma)
                rec["postprocess"].append(CLOCK() - t0)
    finally:
        timer.remove()
    med = {k: 1000 * statistics.median(v) / batch_size for k, v in rec.items()}
    med["head"] = med["predict_raw"] - med["backbone"]
    med["other"] = med["predict"] - med["predict_raw"] - med["postprocess"]
    med["x_floor"] = med["predict"] / med["backbone_alone"]
    return med


def profile_top(model, images: torch.Tensor, batch_size: int, top: int, kind: str) -> str:
    n = (len(images) // batch_size) * batch_size
    batches = [images[i:i + batch_size].to(model.device) for i in range(0, n, batch_size)]
    model.predict(batches[0])
    if kind == "cprofile":
        prof = cProfile.Profile()
        prof.enable()
        for x in batches:
            model.predict(x)
        prof.disable()
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
        return buf.getvalue()
    from torch.profiler import ProfilerActivity, profile, record_function

    with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
        for x in batches:
            with record_function("predict"):
                model.predict(x)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", type=Path, help="a trained model directory")
    src.add_argument("--method", help="train this method first (cpu profile + --set overrides) into a temp dir")
    p.add_argument("--data-root", type=Path, required=True)
    p.add_argument("--category", required=True)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--n-images", type=int, default=32, help="first N test images (default 32)")
    p.add_argument("--repeats", type=int, default=1, help="passes over the images for the stage times")
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--profiler", choices=["torch", "cprofile", "none"], default="torch")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--json", type=Path, default=None, help="also write the stage times here")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="stage times in wall time or process CPU time (use cpu with --threads 1 on a busy machine)")
    args = p.parse_args(argv)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"load average {os.getloadavg()}, {os.cpu_count()} cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads)", flush=True)
    tmp = None
    model_dir = args.model
    if args.method:
        from adcore.methods import resolve_settings
        from adcore.training import TrainOptions, train_model

        tmp = tempfile.TemporaryDirectory(prefix="adcore-profile-")
        t0 = time.perf_counter()
        train_model(resolve_settings(args.method, None, None, args.overrides), args.data_root, args.category,
                    Path(tmp.name) / "model", TrainOptions(cache_dir=Path(tmp.name) / "cache", progress=False))
        print(f"trained {args.method} on {args.category} in {time.perf_counter() - t0:.1f} s", flush=True)
        model_dir = Path(tmp.name) / "model"
    model = load_model(model_dir)
    images = load_timing_images(model, args.data_root, args.category, args.n_images)
    print(f"{model.name}: {model.backbone.name} strides {model.backbone.strides}, input {tuple(images.shape[1:])}, "
          f"{len(images)} images, batch {args.batch_size}", flush=True)

    times = stage_times(model, images, args.batch_size, args.repeats)
    print(f"\nper-image ms, {args.clock} clock (median over batches):")
    for key in ("predict", "backbone", "head", "postprocess", "upsample", "blur", "other", "backbone_alone"):
        print(f"  {key:15s} {times[key]:9.2f}")
    print(f"  predict / backbone-alone = {times['x_floor']:.2f}x")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"method": model.name, "category": args.category,
                                         "batch_size": args.batch_size, "n_images": len(images),
                                         "clock": args.clock, "threads": torch.get_num_threads(),
                                         "load_average": os.getloadavg(), "ms_per_image": times}, indent=2))
    if args.profiler != "none":
        print(f"\ntop {args.top} ({args.profiler}):")
        print(profile_top(model, images, args.batch_size, args.top, args.profiler))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
