"""Per-vertebra measurements on a CT and its vertebra label maps: pure functions on arrays.

What is measured for every label value present (values per :mod:`spine_idc.coding`):

* volume of the whole vertebra (``labels``), from the voxel count and the voxel volume;
* centroid in DICOM patient coordinates (LPS, mm);
* attenuation of the **trabecular core**: the vertebral body (``bodies``) eroded by
  ``erosion_mm`` in physical units, which removes the cortical shell (about 1 mm thick) and
  partial-volume voxels at the endplates, so the mean/median HU describe cancellous bone as used
  for opportunistic osteoporosis screening;
* anterior, middle and posterior heights of the vertebral body along the spine's long axis and
  their ratio min(anterior, middle) / posterior, the quantity the Genant semi-quantitative method
  grades compression fractures by;
* whether the vertebra touches the edge of the image (then it may be cut off and its volume and
  heights are lower bounds).

Geometry conventions follow :mod:`spine_idc.volume`: voxel indices ``(i, j, k)`` map to RAS by
``affine``; LPS is ``diag(-1, -1, 1) @ affine``.  All distances are in mm in patient space, so
anisotropic, oblique or flipped grids give the same answers as isotropic ones.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
from scipy import ndimage

from .volume import LPS_TO_RAS, Volume

log = logging.getLogger(__name__)

#: Fewer trabecular-core voxels than this and the HU statistics are reported as missing.
MIN_TRABECULAR_VOXELS = 20
#: Percentiles bounding the body's anteroposterior extent (stray voxels do not move them).
_AP_PERCENTILES = (2.0, 98.0)
#: Patient anterior in LPS (the fallback anterior direction).
_ANTERIOR_LPS = np.array([0.0, -1.0, 0.0])
_SUPERIOR_LPS = np.array([0.0, 0.0, 1.0])


@dataclasses.dataclass(frozen=True)
class VertebraMeasurement:
    """Measurements of one vertebra (one label value).

    Heights and ``height_ratio`` are ``None`` when the vertebral body is missing or too small to
    split into thirds; the trabecular statistics are ``None`` when fewer than
    :data:`MIN_TRABECULAR_VOXELS` voxels survive the erosion.
    """

    level: str
    label_value: int
    voxel_count: int
    volume_ml: float
    trabecular_mean_hu: float | None
    trabecular_median_hu: float | None
    trabecular_voxels: int
    centroid_lps_mm: tuple[float, float, float]
    body_height_anterior_mm: float | None
    body_height_middle_mm: float | None
    body_height_posterior_mm: float | None
    height_ratio: float | None
    touches_border: bool


def measure_vertebrae(
    ct: Volume,
    labels: Volume,
    bodies: Volume,
    *,
    axis_lps: dict[int, tuple[float, float, float]] | None = None,
    erosion_mm: float = 3.0,
) -> list[VertebraMeasurement]:
    """Measure every vertebra in a label map.

    Parameters
    ----------
    ct:
        The CT in Hounsfield units.
    labels:
        Whole vertebrae, label values per :mod:`spine_idc.coding`, on the grid of ``ct``.
    bodies:
        The same label values restricted to the vertebral bodies (the segmenter provides it).
    axis_lps:
        Optional long (cranio-caudal) axis of the spine per label value, a vector in LPS; its
        sign and length do not matter.  Without it the body's principal axis closest to
        superior-inferior is used.
    erosion_mm:
        Depth in mm removed from the body surface to get the trabecular core.

    Returns
    -------
    list of VertebraMeasurement
        One per label value present, in ascending label value.

    Raises
    ------
    ValueError
        If the three volumes are not on the same grid.
    """
    from .coding import level_for_value

    if not (labels.same_grid(ct) and bodies.same_grid(ct)):
        raise ValueError("ct, labels and bodies must share one voxel grid (shape and affine)")
    lab = np.asarray(labels.array)
    bod = np.asarray(bodies.array)
    if lab.dtype.kind not in "iu" or bod.dtype.kind not in "iu":
        raise ValueError("labels and bodies must be integer label maps")
    m_lps = LPS_TO_RAS @ ct.affine  # diag(-1, -1, 1) is its own inverse: RAS -> LPS
    spacing = ct.spacing
    voxel_ml = ct.voxel_volume_mm3 / 1000.0
    # Bounding boxes once for all labels: each vertebra is then measured on a small crop instead
    # of scanning the whole volume per label.
    lab_boxes = ndimage.find_objects(lab)
    bod_boxes = ndimage.find_objects(bod)
    results = []
    for value in range(1, len(lab_boxes) + 1):
        box = lab_boxes[value - 1]
        if box is None:
            continue
        mask = lab[box] == value
        idx = np.argwhere(mask) + [s.start for s in box]
        pts = _to_lps(idx, m_lps)
        centroid = pts.mean(axis=0)
        touches = any(s.start == 0 or s.stop == n for s, n in zip(box, lab.shape))
        level = level_for_value(value).name

        body_pts = None
        mean_hu = median_hu = None
        n_core = 0
        bbox = bod_boxes[value - 1] if value <= len(bod_boxes) else None
        if bbox is not None:
            body_mask = bod[bbox] == value
            body_idx = np.argwhere(body_mask) + [s.start for s in bbox]
            body_pts = _to_lps(body_idx, m_lps)
            core = _eroded(body_mask, spacing, erosion_mm)
            n_core = int(core.sum())
            if n_core >= MIN_TRABECULAR_VOXELS:
                hu = np.asarray(ct.array[bbox], dtype=np.float64)[core]
                mean_hu, median_hu = float(hu.mean()), float(np.median(hu))
            else:
                log.warning(
                    "%s (label %d): only %d voxels left after eroding the body by %.1f mm "
                    "(need %d); trabecular HU not reported",
                    level, value, n_core, erosion_mm, MIN_TRABECULAR_VOXELS,
                )
        elif level_for_value(value).is_vertebra:  # discs and the canal have no body
            log.warning("%s (label %d): no vertebral body voxels; no heights or HU", level, value)

        heights = (None, None, None)
        if body_pts is not None:
            axis = None if axis_lps is None or value not in axis_lps else axis_lps[value]
            heights = body_heights(body_pts, centroid, spacing, m_lps, axis_lps=axis)
        ant, mid, post = heights
        ratio = None
        if ant is not None and mid is not None and post:
            ratio = min(ant, mid) / post
        results.append(
            VertebraMeasurement(
                level=level,
                label_value=value,
                voxel_count=int(len(idx)),
                volume_ml=float(len(idx) * voxel_ml),
                trabecular_mean_hu=mean_hu,
                trabecular_median_hu=median_hu,
                trabecular_voxels=n_core,
                centroid_lps_mm=(float(centroid[0]), float(centroid[1]), float(centroid[2])),
                body_height_anterior_mm=ant,
                body_height_middle_mm=mid,
                body_height_posterior_mm=post,
                height_ratio=ratio,
                touches_border=bool(touches),
            )
        )
    return results


def _to_lps(idx: np.ndarray, m_lps: np.ndarray) -> np.ndarray:
    return idx @ m_lps[:3, :3].T + m_lps[:3, 3]


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


def long_axis(body_pts: np.ndarray, rel_tol: float = 0.1) -> np.ndarray:
    """The body's principal axis closest to superior-inferior, as a unit LPS vector (+S).

    When that axis' variance is within ``rel_tol`` of another's (a body as tall as it is wide or
    deep) the eigenvector is not defined; the superior direction projected onto the span of
    the near-equal axes is used instead.
    """
    centred = body_pts - body_pts.mean(axis=0)
    evals, evecs = np.linalg.eigh(np.cov(centred.T))
    best = int(np.argmax(np.abs(evecs[2, :])))
    group = np.abs(evals - evals[best]) <= rel_tol * max(evals[best], 1e-9)
    basis = evecs[:, group]
    axis = basis @ (basis.T @ _SUPERIOR_LPS)
    if np.linalg.norm(axis) < 1e-6:
        axis = evecs[:, best]
    axis = axis / np.linalg.norm(axis)
    return axis if axis[2] >= 0 else -axis


def body_heights(
    body_pts: np.ndarray,
    vertebra_centroid: np.ndarray,
    spacing: np.ndarray,
    m_lps: np.ndarray,
    *,
    axis_lps: tuple[float, float, float] | None = None,
    min_columns: int = 3,
) -> tuple[float | None, float | None, float | None]:
    """Anterior, middle and posterior height of a vertebral body in mm.

    The body's voxel centres (LPS mm) are split into thirds along the anteroposterior direction
    (perpendicular to the long axis, pointing from the whole vertebra's centroid to the body's
    centroid, i.e. away from the posterior elements; patient anterior if that is ill-defined).
    The AP extent is bounded by the 2nd and 98th percentiles so stray voxels do not shift the
    thirds.  Within a third, the body is cut into columns parallel to the long axis (a square
    grid about one voxel wide); a column's height is the extent of its voxel centres along the
    axis plus one voxel step along the axis (centres lie half a step inside the surface at each
    end), and the third's height is the median over its columns, so isolated noise voxels above
    or below the body cannot inflate it.

    Returns
    -------
    tuple
        ``(anterior, middle, posterior)`` in mm, ``None`` each where a third holds fewer than
        ``min_columns`` columns.
    """
    if axis_lps is not None:
        u = np.asarray(axis_lps, dtype=float)
        if u.shape != (3,) or not np.linalg.norm(u) > 0:
            raise ValueError(f"axis_lps must be a non-zero 3-vector, got {axis_lps!r}")
        u = u / np.linalg.norm(u)
    else:
        if len(body_pts) < 10:
            return None, None, None
        u = long_axis(body_pts)
    body_centroid = body_pts.mean(axis=0)
    a = _perpendicular(body_centroid - vertebra_centroid, u)
    if a is None or np.linalg.norm(body_centroid - vertebra_centroid) < float(spacing.max()):
        # Labels equal to bodies (no posterior elements) or a degenerate shape: patient anterior.
        a = _perpendicular(_ANTERIOR_LPS, u)
        if a is None:  # the long axis itself is anteroposterior; anything perpendicular will do
            a = _perpendicular(np.array([1.0, 0.0, 0.0]), u)
    w = np.cross(u, a)
    rel = body_pts - body_centroid
    t, s, r = rel @ u, rel @ a, rel @ w

    # One voxel step along u: how far the line along u travels inside one voxel.
    dirs = m_lps[:3, :3] / spacing  # unit voxel axes in LPS
    cos = np.abs(dirs.T @ u)
    step = float(np.min(np.where(cos > 1e-9, spacing / np.maximum(cos, 1e-9), np.inf)))
    # Columns about one voxel wide in the plane perpendicular to u, wide enough that each holds
    # a voxel centre at every height even on oblique grids.
    cos_a, cos_w = np.abs(dirs.T @ a), np.abs(dirs.T @ w)
    width = float(max(np.sum(spacing * cos_a), np.sum(spacing * cos_w), 1e-3))
    col_s = np.floor(s / width).astype(np.int64)
    col_r = np.floor(r / width).astype(np.int64)
    keys = (col_s - col_s.min()) * (col_r.max() - col_r.min() + 1) + (col_r - col_r.min())
    order = np.argsort(keys, kind="stable")
    keys_sorted, t_sorted = keys[order], t[order]
    starts = np.flatnonzero(np.r_[True, np.diff(keys_sorted) != 0])
    col_height = (
        np.maximum.reduceat(t_sorted, starts) - np.minimum.reduceat(t_sorted, starts) + step
    )
    col_centre_s = (np.floor(s[order][starts] / width) + 0.5) * width

    lo, hi = np.percentile(s, _AP_PERCENTILES)
    if hi - lo < 3 * width:
        return None, None, None
    edges = lo + (hi - lo) * np.array([1 / 3, 2 / 3])
    thirds = (
        col_centre_s >= edges[1],  # anterior (a points anteriorly)
        (col_centre_s >= edges[0]) & (col_centre_s < edges[1]),
        col_centre_s < edges[0],
    )
    out = []
    for sel in thirds:
        sel = sel & (col_centre_s >= lo - width) & (col_centre_s <= hi + width)
        out.append(float(np.median(col_height[sel])) if sel.sum() >= min_columns else None)
    return out[0], out[1], out[2]


def _perpendicular(v: np.ndarray, u: np.ndarray) -> np.ndarray | None:
    """``v`` without its component along unit ``u``, normalised; ``None`` if nothing is left."""
    p = np.asarray(v, dtype=float) - np.dot(v, u) * u
    n = np.linalg.norm(p)
    return None if n < 1e-6 else p / n
