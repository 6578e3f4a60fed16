"""Anomaly generation (PRN 3.4 and appendix A.1), reusable by any method that trains on synthetic defects.

- :mod:`perlin`: Perlin-noise masks; :mod:`shapes`: target-area shapes; :mod:`foreground`: where the object is;
- :mod:`textures`: texture images from a folder, or procedural ones;
- :mod:`extended`: extended anomalies (EA) from seen defects, Aug1 / Aug2, the blend of Eq. 4;
- :mod:`simulated`: heterogenous (HEA, textures) and homologous (HOA, shuffled normal image) anomalies, Eq. 6;
- :mod:`generator`: :class:`AnomalyGenerator` mixing the kinds; :mod:`grid`: a picture grid of examples.

Every generated mask is the intended anomaly region (the paper's M: the cropped region for EA, the Perlin noise inside
the target area for HEA/HOA), which lies in its target area; only its pixels may differ from the normal image (a
pixel of M where the pasted content equals the normal image stays part of M). Textures follow the category's colour
mode (grey textures for a grayscale category).
"""

from adcore.synthesis.extended import AUG1_OPS, Anomaly, aug1, aug2, blend, extended_anomaly
from adcore.synthesis.foreground import Foreground, estimate_foreground, whole_image
from adcore.synthesis.generator import KINDS, AnomalyGenerator
from adcore.synthesis.grid import anomaly_grid_for_category, render_grid, save_anomaly_grid
from adcore.synthesis.loading import build_generator, load_images, load_seen
from adcore.synthesis.perlin import perlin_mask, perlin_noise
from adcore.synthesis.shapes import SHAPES, sample_target_area, shape_mask
from adcore.synthesis.simulated import heterogenous_anomaly, homologous_anomaly, perlin_region, shuffle_grid
from adcore.synthesis.textures import TextureSource, is_grayscale, procedural_texture, texture_images, to_grayscale

__all__ = [
    "AUG1_OPS", "KINDS", "SHAPES", "Anomaly", "AnomalyGenerator", "Foreground", "TextureSource",
    "anomaly_grid_for_category", "aug1", "aug2", "blend", "build_generator", "estimate_foreground",
    "extended_anomaly", "heterogenous_anomaly", "homologous_anomaly", "is_grayscale", "load_images", "load_seen",
    "perlin_mask", "perlin_noise", "perlin_region", "procedural_texture", "render_grid", "sample_target_area",
    "save_anomaly_grid", "shape_mask", "shuffle_grid", "texture_images", "to_grayscale", "whole_image",
]
