"""Attenuation of the trabecular core: the body eroded by ``erosion_mm`` (SR: mean and median
HU, method "trabecular core")."""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage

from .base import Vertebra

log = logging.getLogger(__name__)

#: Fewer trabecular-core voxels than this and the HU statistics are reported as missing.
MIN_TRABECULAR_VOXELS = 20

#: The ``measure`` section's keys this quantity reads, with their defaults (the schema
#: documents them for users; a test checks that the two agree).
OPTIONS = {"erosion_mm": 3.0}

FIELDS = [("trabecular_mean_hu", float | None), ("trabecular_median_hu", float | None),
          ("trabecular_voxels", int)]


def measure(v: Vertebra) -> dict:
    mean_hu = median_hu = None
    n_core = 0
    if v.body_mask is not None:
        erosion_mm = v.options["erosion_mm"]
        core = _eroded(v.body_mask, v.spacing, erosion_mm)
        n_core = int(core.sum())
        if n_core >= MIN_TRABECULAR_VOXELS:
            hu = np.asarray(v.ct.array[v.body_box], dtype=np.float64)[core]
            mean_hu, median_hu = float(hu.mean()), float(np.median(hu))
        else:
            log.warning(
                "%s (label %d): only %d voxels left after eroding the body by %.1f mm "
                "(need %d); trabecular HU not reported",
                v.level, v.value, n_core, erosion_mm, MIN_TRABECULAR_VOXELS,
            )
    return {"trabecular_mean_hu": mean_hu, "trabecular_median_hu": median_hu,
            "trabecular_voxels": n_core}


def sr_items(m, site) -> list:
    import highdicom as hd

    from .. import coding

    out = []
    for value, derivation in ((m.trabecular_mean_hu, coding.MEAN),
                              (m.trabecular_median_hu, coding.MEDIAN)):
        if value is not None:
            out.append(hd.sr.Measurement(
                name=coding.ATTENUATION_COEFFICIENT, value=value, unit=coding.UNIT_HU,
                derivation=derivation, method=coding.TRABECULAR_CORE,
            ))
    return out


def _eroded(mask: np.ndarray, spacing: np.ndarray, erosion_mm: float) -> np.ndarray:
    """Voxels whose centre lies deeper than ``erosion_mm`` below the surface of ``mask``.

    A Euclidean distance transform with ``sampling=spacing`` erodes by the same physical depth
    in every direction on anisotropic grids (iterated binary erosion would erode by whole voxels,
    i.e. by different depths in-plane and between slices).  The transform gives the distance to
    the nearest *centre* of a background voxel; the surface is where the straight line to that
    centre enters the background voxel, so the depth is that distance less the part inside the
    background voxel (half a voxel for an axis-aligned offset).  The crop is padded with
    background so that a body cut by the image edge is eroded there too.
    """
    padded = np.pad(mask, 1)
    dist, nearest = ndimage.distance_transform_edt(padded, sampling=spacing, return_indices=True)
    offset = np.abs(nearest - np.indices(padded.shape)).max(axis=0)
    depth = dist * (1.0 - 0.5 / np.maximum(offset, 1))
    return (depth > erosion_mm)[1:-1, 1:-1, 1:-1]
