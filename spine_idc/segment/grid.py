"""Resampling between a CT's own grid and the classical backend's working grid.

The working grid is axis-aligned in DICOM patient coordinates (LPS) with isotropic voxels:
index ``[a, b, c]`` grows towards patient Left, Posterior and Superior.  Because LPS axes are
anatomical whatever the patient position (head/feet first, supine/prone) and whatever order or
sign the source axes have, every later step can treat axis 2 as the body axis and axis 1 as
anterior -> posterior.  All mappings go through the affines (physical space), never through
array indices.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage

from ..volume import LPS_TO_RAS, Volume

log = logging.getLogger(__name__)


def lps_affine(ct: Volume) -> np.ndarray:
    """Voxel -> LPS affine of a :class:`Volume` (whose own affine is voxel -> RAS)."""
    return LPS_TO_RAS @ ct.affine


def working_affine(origin_lps: np.ndarray, spacing: float) -> np.ndarray:
    """Voxel -> LPS affine of an axis-aligned isotropic grid starting at ``origin_lps``."""
    a = np.eye(4)
    a[:3, :3] *= spacing
    a[:3, 3] = origin_lps
    return a


def bounding_box_lps(shape: tuple[int, ...], affine_lps: np.ndarray, lo=None, hi=None):
    """LPS bounding box (min, max corners) of voxel centres ``lo..hi`` of a grid."""
    lo = np.zeros(3) if lo is None else np.asarray(lo, float)
    hi = np.asarray(shape, float) - 1 if hi is None else np.asarray(hi, float)
    corners = np.array(
        [[x, y, z, 1.0] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
    )
    pts = (affine_lps @ corners.T).T[:, :3]
    return pts.min(axis=0), pts.max(axis=0)


def _signed_permutation(m: np.ndarray, tol: float = 1e-4):
    """If ``m`` (3x3) is a diagonal matrix up to axis permutation, return (perm, scale)."""
    perm = np.argmax(np.abs(m), axis=0)  # output axis -> input axis
    if sorted(perm.tolist()) != [0, 1, 2]:
        return None
    off = m.copy()
    off[perm, [0, 1, 2]] = 0.0
    if np.abs(off).max() > tol * max(1.0, np.abs(m).max()):
        return None
    return perm, m[perm, [0, 1, 2]]


def resample(
    array: np.ndarray,
    src_affine: np.ndarray,
    dst_shape: tuple[int, int, int],
    dst_affine: np.ndarray,
    *,
    order: int,
    cval: float,
    dtype=None,
) -> np.ndarray:
    """Resample ``array`` (grid ``src_affine``) onto ``dst_shape``/``dst_affine``.

    Both affines map voxels to the same physical frame.  ``order=0`` is nearest neighbour (for
    labels), ``order=1`` trilinear.  When the two grids differ only by axis order, flips and
    scale (the usual case: axial CTs), the array is transposed first so that scipy can use its
    fast separable zoom-and-shift path instead of a general matrix per voxel.
    """
    dtype = dtype or array.dtype
    m = np.linalg.inv(src_affine) @ dst_affine  # dst voxel -> src voxel
    out = np.empty(dst_shape, dtype=dtype)
    sp = _signed_permutation(m[:3, :3])
    if sp is not None:
        perm, scale = sp
        # src axis perm[d] follows dst axis d: transposing the source makes the matrix diagonal.
        src = np.transpose(array, perm)
        ndimage.affine_transform(
            src, scale, offset=m[perm, 3], output_shape=dst_shape, output=out,
            order=order, mode="constant", cval=cval, prefilter=False,
        )
    else:
        ndimage.affine_transform(
            array, m[:3, :3], offset=m[:3, 3], output_shape=dst_shape, output=out,
            order=order, mode="constant", cval=cval, prefilter=False,
        )
    return out


def to_working_grid(
    ct: Volume, spacing: float, lo_lps=None, hi_lps=None, cval: float = -1024.0
) -> tuple[np.ndarray, np.ndarray]:
    """Resample ``ct`` (HU) onto the LPS-aligned working grid covering ``lo_lps..hi_lps``.

    Returns the ``float32`` array and its voxel -> LPS affine.  Without bounds, the grid covers
    the whole CT.
    """
    src_lps = lps_affine(ct)
    if lo_lps is None or hi_lps is None:
        lo_lps, hi_lps = bounding_box_lps(ct.array.shape, src_lps)
    lo_lps = np.asarray(lo_lps, float)
    shape = tuple(int(n) for n in np.floor((np.asarray(hi_lps) - lo_lps) / spacing + 1e-6) + 1)
    aff = working_affine(lo_lps, spacing)
    arr = resample(ct.array, src_lps, shape, aff, order=1, cval=cval, dtype=np.float32)
    return arr, aff


def inside_source_mask(ct_shape, ct_affine_lps, dst_shape, dst_affine) -> np.ndarray:
    """Boolean mask on the destination grid: which voxels lie inside the source CT's extent.

    Used to tell the edge of the field of view from a real edge of an object.
    """
    ones = np.ones(ct_shape, dtype=np.uint8)
    m = resample(ones, ct_affine_lps, dst_shape, dst_affine, order=0, cval=0)
    return m.astype(bool)


def labels_to_source_grid(
    labels: np.ndarray, work_affine_lps: np.ndarray, ct: Volume, dtype=np.uint8
) -> np.ndarray:
    """Nearest-neighbour map of a working-grid label array back onto the CT's own grid.

    Only the CT sub-box that can receive labels is computed, which keeps this cheap on large
    CTs whose spine occupies a small part of the field of view.
    """
    out = np.zeros(ct.array.shape, dtype=dtype)
    nz = np.argwhere(labels > 0)
    if nz.size == 0:
        return out
    lo_w, hi_w = nz.min(axis=0) - 1, nz.max(axis=0) + 1
    lo_lps, hi_lps = bounding_box_lps(labels.shape, work_affine_lps, lo_w, hi_w)
    src_lps = lps_affine(ct)
    inv = np.linalg.inv(src_lps)
    corners = np.array(
        [[x, y, z, 1.0] for x in (lo_lps[0], hi_lps[0]) for y in (lo_lps[1], hi_lps[1])
         for z in (lo_lps[2], hi_lps[2])]
    )
    idx = (inv @ corners.T).T[:, :3]
    lo = np.clip(np.floor(idx.min(axis=0)).astype(int) - 1, 0, None)
    hi = np.minimum(np.ceil(idx.max(axis=0)).astype(int) + 2, np.array(ct.array.shape))
    if np.any(hi <= lo):
        return out
    sub_aff = src_lps.copy()
    sub_aff[:3, 3] = (src_lps @ np.r_[lo, 1.0])[:3]
    sub = resample(
        labels.astype(dtype, copy=False), work_affine_lps, tuple(hi - lo), sub_aff,
        order=0, cval=0,
    )
    out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = sub
    return out
