"""Progress bars on stderr that switch off cleanly in logs and tests."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from tqdm.auto import tqdm


def progress(iterable: Iterable[Any], desc: str = "", enabled: bool = True, **kwargs: Any) -> Iterable[Any]:
    """A tqdm bar on a terminal, one line per ~10% elsewhere (pods, CI logs); nothing when disabled."""
    if not enabled or os.environ.get("ADCORE_NO_PROGRESS"):
        return iterable
    interactive = sys.stderr.isatty()
    return tqdm(iterable, desc=desc, file=sys.stderr, dynamic_ncols=True, leave=False,
                mininterval=0.5 if interactive else 30.0, **kwargs)


class _EpochBar:
    """An epoch counter that shows each finished epoch at once: epochs are slow, so every update is worth a line."""

    def __init__(self, total: int, initial: int, desc: str, enabled: bool) -> None:
        self.bar = None
        if enabled and not os.environ.get("ADCORE_NO_PROGRESS"):
            self.bar = tqdm(total=total, initial=initial, desc=desc, file=sys.stderr, dynamic_ncols=True,
                            leave=True, mininterval=0.0, miniters=1)

    def advance(self, losses: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in losses.items()}, refresh=False)
            self.bar.update(1)
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@contextmanager
def epoch_bar(total: int, initial: int = 0, desc: str = "epochs", enabled: bool = True) -> Iterator[_EpochBar]:
    """A bar that counts epochs as they finish (``bar.advance(losses)``), shown on terminals and in pod logs alike.

    The plain ``progress`` wrapper updates a non-terminal log at most every 30 s, and an epoch loop wrapped around
    inner bars left the epoch bar at "0/N" until the end; this one redraws after every epoch.
    """
    bar = _EpochBar(total, initial, desc, enabled)
    try:
        yield bar
    finally:
        bar.close()
