"""Heights of the vertebral body: anterior, middle and posterior along the spine's long axis,
and their ratio min(anterior, middle) / posterior, by which the Genant semi-quantitative method
grades compression fractures (SR: three heights with their topographical modifiers, and the
ratio)."""

from __future__ import annotations

import numpy as np

from .base import Vertebra

#: Percentiles bounding the body's anteroposterior extent (stray voxels do not move them).
_AP_PERCENTILES = (2.0, 98.0)
#: Patient anterior in LPS (the fallback anterior direction).
_ANTERIOR_LPS = np.array([0.0, -1.0, 0.0])
_SUPERIOR_LPS = np.array([0.0, 0.0, 1.0])

FIELDS = [("body_height_anterior_mm", float | None), ("body_height_middle_mm", float | None),
          ("body_height_posterior_mm", float | None), ("height_ratio", float | None)]


def measure(v: Vertebra) -> dict:
    ant = mid = post = None
    if v.body_pts is not None:
        ant, mid, post = body_heights(v.body_pts, v.centroid, v.spacing, v.m_lps,
                                      axis_lps=v.axis_lps)
    ratio = None
    if ant is not None and mid is not None and post:
        ratio = min(ant, mid) / post
    return {"body_height_anterior_mm": ant, "body_height_middle_mm": mid,
            "body_height_posterior_mm": post, "height_ratio": ratio}


def sr_items(m, site) -> list:
    import highdicom as hd

    from .. import coding

    out = []
    for value, modifier in ((m.body_height_anterior_mm, coding.ANTERIOR),
                            (m.body_height_middle_mm, coding.CENTRAL),
                            (m.body_height_posterior_mm, coding.POSTERIOR)):
        if value is not None:
            out.append(hd.sr.Measurement(
                name=coding.VERTEBRAL_BODY_HEIGHT, value=value, unit=coding.UNIT_MM,
                finding_sites=[hd.sr.FindingSite(site, topographical_modifier=modifier)],
            ))
    if m.height_ratio is not None:
        out.append(hd.sr.Measurement(
            name=coding.BODY_HEIGHT_RATIO, value=m.height_ratio, unit=coding.UNIT_RATIO,
        ))
    return out


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
