"""On-disk cache of a frozen backbone's multi-scale features.

Methods with a frozen backbone train for many epochs on the same features; the cache runs the backbone once per
image and stores each stage as an fp16 ``.npy`` file (memory-mapped when read, so a category never has to fit in
memory). The key covers everything that changes the features: backbone architecture, cut and weights, the image
transform, and the content hash of every image, in order. A changed part gives a new key; a corrupt or partial
entry is rebuilt.

Concurrent fills of one entry (several processes training on one category) are safe without a lock: each fills a
private temporary folder and renames it into place; one that finds the entry already there reads that one and
drops its own. Whoever filled it, every caller gets the features of its own images.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from adcore.io import _UMASK, atomic_write_json, file_sha256, move_aside
from adcore.progress import progress

log = logging.getLogger(__name__)
CACHE_FORMAT = 1


@dataclass
class CachedFeatures:
    """Features of ``n`` images: one (n, C, H, W) fp16 array per stage, in the extractor's stride order."""

    key: str
    stages: list[np.ndarray]
    paths: list[str]

    def __len__(self) -> int:
        return len(self.paths)

    def get(self, indices: Sequence[int] | np.ndarray, device: torch.device | str = "cpu") -> list[torch.Tensor]:
        idx = np.asarray(indices, dtype=np.int64)
        order = np.argsort(idx)  # memory-mapped reads are fastest in file order
        out = []
        for stage in self.stages:
            block = np.asarray(stage[idx[order]], dtype=np.float32)
            block[order] = block.copy()
            out.append(torch.from_numpy(block).to(device))
        return out

    def batches(
        self, batch_size: int, *, shuffle: bool = False, rng: np.random.Generator | None = None,
        device: torch.device | str = "cpu", drop_last: bool = False,
    ) -> Iterator[tuple[np.ndarray, list[torch.Tensor]]]:
        n = len(self)
        order = (rng or np.random.default_rng(0)).permutation(n) if shuffle else np.arange(n)
        stop = n - n % batch_size if drop_last and n >= batch_size else n
        for start in range(0, stop, batch_size):
            idx = order[start:start + batch_size]
            yield idx, self.get(idx, device)


class FeatureCache:
    """``FeatureCache(root)`` stores entries under ``root``; ``FeatureCache(None)`` keeps them in memory only."""

    def __init__(self, root: str | Path | None) -> None:
        self.root = Path(root) if root is not None else None

    def key(self, extractor, transform, samples: Sequence) -> str:
        digest = hashlib.sha256()
        digest.update(f"format={CACHE_FORMAT}|{extractor.fingerprint}|{transform.fingerprint}".encode())
        for sample in samples:
            digest.update(file_sha256(sample.path).encode())
        return digest.hexdigest()[:24]

    def features(
        self, extractor, samples: Sequence, transform, *, batch_size: int = 8, num_workers: int = 0,
        show_progress: bool = True,
    ) -> CachedFeatures:
        """Features of ``samples`` (adcore.data.Sample) through ``transform`` and ``extractor``: cached or extracted."""
        key = self.key(extractor, transform, samples)
        paths = [str(s.path) for s in samples]
        if self.root is not None:
            entry = self.root / key
            cached = self._read(entry, key, len(samples))
            if cached is not None:
                log.info("feature cache hit %s (%d images)", key, len(samples))
                return CachedFeatures(key, cached, paths)
            if entry.exists():
                log.warning("feature cache entry %s is corrupt or partial: rebuilding", entry)
                self._discard(entry)
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=f".{key}.", suffix=".tmp"))
            try:
                written = self._extract(extractor, samples, transform, batch_size, num_workers, show_progress, tmp)
                atomic_write_json(tmp / "meta.json", {
                    "format": CACHE_FORMAT, "key": key, "n": len(samples), "n_stages": len(written),
                    "backbone": extractor.fingerprint,
                    "transform": transform.fingerprint, "paths": paths,
                })
                # Memory-mapped before the rename: the maps stay valid whatever happens to the entry afterwards.
                ours = self._read(tmp, key, len(samples))
                if ours is None:
                    raise OSError(errno.EIO, "feature cache entry unreadable right after writing it", str(tmp))
                return CachedFeatures(key, self._install(tmp, entry, key, len(samples), ours), paths)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)  # gone already when renamed into place
        stages = self._extract(extractor, samples, transform, batch_size, num_workers, show_progress, None)
        return CachedFeatures(key, stages, paths)

    def _install(self, tmp: Path, entry: Path, key: str, n: int, ours: list[np.ndarray]) -> list[np.ndarray]:
        """Rename the filled folder ``tmp`` to ``entry``; when another process got there first, use its entry."""
        for _ in range(3):
            try:
                os.chmod(tmp, 0o777 & ~_UMASK)
                os.rename(tmp, entry)  # atomic; fails when entry exists and is not empty
                return ours
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY) and not isinstance(exc, FileExistsError):
                    raise
            theirs = self._read(entry, key, n)
            if theirs is not None:
                log.info("feature cache entry %s was filled by another process meanwhile: using it", key)
                return theirs
            self._discard(entry)  # theirs is corrupt: put ours in its place
        return ours  # still contended: our own (memory-mapped) arrays are as good

    @staticmethod
    def _discard(entry: Path) -> None:
        """Move a corrupt entry aside atomically, then delete it (another process may be discarding it too)."""
        trash = move_aside(entry)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)

    @staticmethod
    def _read(entry: Path, key: str, n: int) -> list[np.ndarray] | None:
        meta_path = entry / "meta.json"
        if not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("format") != CACHE_FORMAT or meta.get("key") != key or meta.get("n") != n:
                return None
            stages = []
            for i in range(meta["n_stages"]):
                arr = np.load(entry / f"stage{i}.npy", mmap_mode="r", allow_pickle=False)
                if arr.shape[0] != n or arr.dtype != np.float16:
                    return None
                stages.append(arr)
            return stages
        except (OSError, ValueError, KeyError, json.JSONDecodeError):
            return None

    @staticmethod
    def _extract(extractor, samples, transform, batch_size, num_workers, show_progress, out_dir: Path | None):
        from adcore.data.dataset import make_loader

        device = next(extractor.parameters()).device
        loader = make_loader(list(samples), transform, batch_size=batch_size, num_workers=num_workers)
        stages: list[np.ndarray] = []
        pos = 0
        with torch.inference_mode():
            for batch in progress(loader, desc="extracting features", enabled=show_progress):
                feats = extractor(batch["image"].to(device))
                if not stages:
                    for i, f in enumerate(feats):
                        shape = (len(samples), *f.shape[1:])
                        if out_dir is None:
                            stages.append(np.empty(shape, dtype=np.float16))
                        else:
                            stages.append(np.lib.format.open_memmap(out_dir / f"stage{i}.npy", mode="w+",
                                                                    dtype=np.float16, shape=shape))
                b = feats[0].shape[0]
                for arr, f in zip(stages, feats, strict=True):
                    arr[pos:pos + b] = f.float().cpu().numpy().astype(np.float16)
                pos += b
        if out_dir is not None:
            for arr in stages:
                if isinstance(arr, np.memmap):  # always, with an out_dir
                    arr.flush()
        return stages
