"""Progress bars on stderr that switch off cleanly in logs and tests."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm


def progress(iterable: Iterable[Any], desc: str = "", enabled: bool = True, **kwargs: Any) -> Iterable[Any]:
    """A tqdm bar on a terminal, one line per ~10% elsewhere (pods, CI logs); nothing when disabled."""
    if not enabled or os.environ.get("ADCORE_NO_PROGRESS"):
        return iterable
    interactive = sys.stderr.isatty()
    return tqdm(iterable, desc=desc, file=sys.stderr, dynamic_ncols=True, leave=False,
                mininterval=0.5 if interactive else 30.0, **kwargs)
