"""One object that draws anomalies of the enabled kinds for a category: the online generator PRN trains with."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from adcore.synthesis.extended import Anomaly, extended_anomaly
from adcore.synthesis.foreground import Foreground, whole_image
from adcore.synthesis.shapes import sample_target_area
from adcore.synthesis.simulated import heterogenous_anomaly, homologous_anomaly
from adcore.synthesis.textures import TextureSource, is_grayscale

KINDS = ("ea", "hea", "hoa")


class AnomalyGenerator:
    """Generates EA / HEA / HOA anomalies on normal images of one size.

    ``normals``: (N, S, S, 3) uint8 normal images (the HOA sources); ``seen``: (image, mask) pairs of seen
    anomalies at the same size (pairs with an empty mask are ignored); ``foreground``: where anomalies may go
    (None: the whole image); ``use_target_area=False`` drops the random shape (ablation "without TA": only the
    foreground constrains the region).
    """

    def __init__(self, normals: np.ndarray, seen: Sequence[tuple[np.ndarray, np.ndarray]] = (),
                 textures: TextureSource | None = None, foreground: Foreground | None = None, *,
                 kinds: Sequence[str] = KINDS, use_target_area: bool = True, grid: int = 8,
                 ea_beta: tuple[float, float] = (0.0, 0.5), sim_beta: tuple[float, float] = (0.0, 0.8)) -> None:
        self.normals = normals
        self.size = int(normals.shape[1])
        self.seen = [(img, m.astype(bool)) for img, m in seen if np.asarray(m).any()]
        self.textures = textures or TextureSource(None, self.size, grayscale=is_grayscale(normals))
        self.foreground = foreground or whole_image(self.size)
        unknown = [k for k in kinds if k not in KINDS]
        if unknown:
            raise ValueError(f"anomaly kinds {unknown}: expected some of {KINDS}")
        # EA needs at least one seen anomaly with a non-empty mask.
        self.kinds = tuple(k for k in kinds if k != "ea" or self.seen)
        self.use_target_area = use_target_area
        self.grid = grid
        self.ea_beta, self.sim_beta = ea_beta, sim_beta

    @property
    def simulated_kinds(self) -> tuple[str, ...]:
        return tuple(k for k in self.kinds if k != "ea")

    def target_area(self, rng: np.random.Generator, size_range: tuple[float, float] = (0.2, 0.5)) -> np.ndarray:
        if not self.use_target_area:
            return self.foreground.mask.copy()
        return sample_target_area(self.foreground.mask, rng, size_range)

    def generate(self, normal: np.ndarray, kind: str, rng: np.random.Generator) -> Anomaly:
        """One anomaly of ``kind`` on ``normal`` (S, S, 3) uint8."""
        if kind == "ea":
            if not self.seen:
                raise ValueError("extended anomalies need seen anomalies with non-empty masks")
            image, mask = self.seen[int(rng.integers(0, len(self.seen)))]
            return extended_anomaly(normal, image, mask, self.target_area(rng, (0.3, 0.7)), rng, self.ea_beta)
        if kind == "hea":
            return heterogenous_anomaly(normal, self.textures.sample(rng), self.target_area(rng), rng, self.sim_beta,
                                        retarget=self.target_area)
        if kind == "hoa":
            source = self.normals[int(rng.integers(0, len(self.normals)))]
            return homologous_anomaly(normal, source, self.target_area(rng), rng, self.grid, self.sim_beta,
                                      retarget=self.target_area)
        raise ValueError(f"anomaly kind {kind!r}: expected one of {KINDS}")

    def pick_kind(self, rng: np.random.Generator, slot: str) -> str | None:
        """The kind for a batch slot: ``"ea"`` slots fall back to simulated kinds without seen anomalies, and
        ``"sim"`` slots to EA when both simulated kinds are off. None when no kind is enabled."""
        sim = self.simulated_kinds
        if slot == "ea" and "ea" in self.kinds:
            return "ea"
        if sim:
            return sim[int(rng.integers(0, len(sim)))]
        return "ea" if "ea" in self.kinds else None
