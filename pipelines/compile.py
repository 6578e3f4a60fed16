"""``python -m pipelines.compile``: write the pipeline's YAML (default pipelines/compiled/training.yaml).

The output depends only on the code and the images, never on the time or the machine, so the committed file can be
checked for staleness (tests/test_pipeline.py recompiles and compares).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

COMPILED = Path(__file__).resolve().parent / "compiled" / "training.yaml"


def compile_pipeline(output: str | Path = COMPILED, *, cpu_image: str = "", train_image: str = "") -> Path:
    """Compile to ``output`` atomically and return its path."""
    from kfp import compiler

    from adcore.io import atomic_path
    from pipelines.training import build_pipeline

    output = Path(output)
    with atomic_path(output, suffix=".yaml") as tmp:  # kfp picks the format from the extension
        compiler.Compiler().compile(build_pipeline(cpu_image, train_image), str(tmp))
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.compile", description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=COMPILED)
    parser.add_argument("--image", default="", help="CPU image (default $ADCORE_CPU_IMAGE or the release tag)")
    parser.add_argument("--train-image", default="", help="GPU image (default $ADCORE_TRAIN_IMAGE or the release tag)")
    args = parser.parse_args(argv)
    print(compile_pipeline(args.output, cpu_image=args.image, train_image=args.train_image))
    return 0


if __name__ == "__main__":
    sys.exit(main())
