"""Progress output: the epoch bar shows every finished epoch at once, in pod logs as on terminals."""

from __future__ import annotations

import io

from adcore import progress


def test_epoch_bar_counts_every_epoch_as_it_finishes(monkeypatch):
    err = io.StringIO()  # not a terminal, as in a pod's log
    monkeypatch.setattr(progress.sys, "stderr", err)
    monkeypatch.delenv("ADCORE_NO_PROGRESS", raising=False)
    seen = []
    with progress.epoch_bar(3, 0, desc="demo epochs") as bar:
        for epoch in range(3):
            bar.advance({"loss": 1.0 / (epoch + 1)})
            seen.append(err.getvalue())
    assert "1/3" in seen[0] and "2/3" in seen[1] and "3/3" in seen[2]  # shown after each epoch, not at the end
    assert "loss=0.5" in seen[1]


def test_epoch_bar_resumes_from_the_completed_epochs_and_can_be_silenced(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr(progress.sys, "stderr", err)
    monkeypatch.delenv("ADCORE_NO_PROGRESS", raising=False)  # `adcore --no-progress` in another test may set it
    with progress.epoch_bar(5, 2, desc="resumed") as bar:
        bar.advance({})
    assert "3/5" in err.getvalue()
    monkeypatch.setenv("ADCORE_NO_PROGRESS", "1")
    quiet = io.StringIO()
    monkeypatch.setattr(progress.sys, "stderr", quiet)
    with progress.epoch_bar(5) as bar:
        bar.advance({"loss": 1.0})
    assert quiet.getvalue() == ""
