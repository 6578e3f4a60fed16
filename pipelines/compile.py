"""``python -m pipelines.compile``: write the pipeline's YAML (default pipelines/compiled/training.yaml).

The output depends only on the code and the images, never on the time or the machine, so the committed file can be
checked for staleness (tests/test_pipeline.py recompiles and compares).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from adcore.errors import ConfigError
from pipelines.training import MIN_BACKEND, ClusterSettings

COMPILED = Path(__file__).resolve().parent / "compiled" / "training.yaml"


def compile_pipeline(output: str | Path = COMPILED, *, cpu_image: str = "", train_image: str = "",
                     settings: ClusterSettings | None = None) -> Path:
    """Compile to ``output`` atomically and return its path."""
    from kfp import compiler

    from adcore.io import atomic_path
    from pipelines.training import build_pipeline

    output = Path(output)
    with atomic_path(output, suffix=".yaml") as tmp:  # kfp picks the format from the extension
        compiler.Compiler().compile(build_pipeline(cpu_image, train_image, settings), str(tmp))
    return output


def cluster_settings(args: argparse.Namespace) -> ClusterSettings:
    """The --flags as ClusterSettings; ConfigError naming the flag on a bad value."""
    from pipelines.training import ClusterSettings

    timeouts = dict(ClusterSettings().timeouts)
    for item in args.timeout:
        step, _, seconds = item.partition("=")
        if step not in timeouts or not seconds.isdigit() or int(seconds) <= 0:
            raise ConfigError(f"--timeout {item!r}: expected STEP=SECONDS with STEP one of {', '.join(timeouts)}")
        timeouts[step] = int(seconds)
    for flag in ("parallel_categories", "parallel_methods"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be at least 1")
    scratch = args.scratch
    if args.scratch_from_manifest:
        from pipelines.data_volume import scratch_size

        scratch = scratch_size(args.scratch_from_manifest)
    return ClusterSettings(timeouts=tuple(timeouts.items()), parallel_categories=args.parallel_categories,
                           parallel_methods=args.parallel_methods, queue=args.queue, priority=args.priority,
                           cache_train=args.cache_train, scratch=scratch, optional_secrets=not args.legacy_backend)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.compile", description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=COMPILED)
    parser.add_argument("--image", default="", help="CPU image (default $ADCORE_CPU_IMAGE or the release tag)")
    parser.add_argument("--train-image", default="", help="GPU image (default $ADCORE_TRAIN_IMAGE or the release tag)")
    defaults = ClusterSettings()
    parser.add_argument("--timeout", action="append", default=[], metavar="STEP=SECONDS",
                        help=f"pod deadline of a step (defaults: {dict(defaults.timeouts)})")
    parser.add_argument("--parallel-categories", type=int, default=defaults.parallel_categories,
                        help="categories at once (default %(default)s)")
    parser.add_argument("--parallel-methods", type=int, default=defaults.parallel_methods,
                        help="methods at once per category (default %(default)s); GPU pods <= product of the two")
    parser.add_argument("--queue", default=defaults.queue, help="Kueue LocalQueue label ('' for none)")
    parser.add_argument("--priority", default=defaults.priority, help="Kueue WorkloadPriorityClass ('' for none)")
    parser.add_argument("--no-cache-train", dest="cache_train", action="store_false",
                        help="always retrain, even when data, code and settings are unchanged")
    parser.add_argument("--scratch", default=defaults.scratch, help="per-category pods' /tmp size limit")
    parser.add_argument("--scratch-from-manifest", default="", metavar="MANIFEST",
                        help="size --scratch from a fetch manifest.json (largest category, see data_volume.py)")
    parser.add_argument("--legacy-backend", action="store_true",
                        help=f"for KFP backends older than {MIN_BACKEND}: no optional Secret keys, so "
                             "AWS_ENDPOINT_URL and the Secret adcore-webhook must then exist")
    args = parser.parse_args(argv)
    try:
        settings = cluster_settings(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(compile_pipeline(args.output, cpu_image=args.image, train_image=args.train_image, settings=settings))
    from pipelines.batch_predict import compile_batch_pipeline  # the batch scoring pipeline, beside it

    print(compile_batch_pipeline(Path(args.output).with_name("batch_predict.yaml"), cpu_image=args.image))
    return 0


if __name__ == "__main__":
    sys.exit(main())
