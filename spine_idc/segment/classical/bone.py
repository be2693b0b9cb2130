"""Bone masks: dense (cortical) bone by threshold, plus the trabecular bone it encloses.

Trabecular bone can be as faint as 80-100 HU, no brighter than an intervertebral disc, so a
threshold alone either misses osteoporotic bodies or swallows discs and soft tissue.  What
tells marrow from a disc is topology: marrow lies *inside* a cortical shell.  So the mask is the
cortex plus its holes -- regions of the non-bone that are enclosed by bone in 3-D or in a 2-D
plane along any axis -- whose mean HU is above soft tissue.  Hole size is limited so
that a closed bony ring never fills a body cavity, and the HU floor keeps the spinal canal
(CSF, cord, epidural fat), which is enclosed by the vertebral arch in axial planes, out.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage

log = logging.getLogger(__name__)

#: HU of soft tissue (muscle, disc annulus) against which the bone thresholds are set (here,
#: the lowest of the steps that use it; :mod:`.column` uses it too).
SOFT_HU = 40.0
#: How many voxel layers below the surface threshold may be peeled from the outside, by
#: default: a sharp cortex blurred by the scanner leaves a skirt two to three voxels wide.
PEEL_LAYERS = 3
PEEL_INPLANE = False


def plane_structure(axis: int) -> np.ndarray:
    """4-connectivity within planes perpendicular to ``axis``, none across them."""
    s = np.zeros((3, 3, 3), dtype=bool)
    idx = [1, 1, 1]
    s[tuple(idx)] = True
    for other in range(3):
        if other == axis:
            continue
        for d in (0, 2):
            j = list(idx)
            j[other] = d
            s[tuple(j)] = True
    return s


def enclosed(
    mask: np.ndarray,
    axis: int | None,
    max_size: int,
    values: np.ndarray,
    min_mean: float,
    protect: np.ndarray | None = None,
) -> np.ndarray:
    """Background regions of ``mask`` enclosed by it, small and bright enough to be marrow.

    Parameters
    ----------
    mask:
        Boolean 3-D array (the dense bone).
    axis:
        ``None`` for holes in 3-D (6-connected background), or an axis: holes in each 2-D plane
        perpendicular to it (4-connected background within the plane).
    max_size:
        Larger holes are not returned (body cavities, the skull's contents).
    values, min_mean:
        A hole is returned only if the mean of ``values`` over it exceeds ``min_mean``.  The
        decision is per hole, not per voxel: the rim of the spinal canal is brightened by
        partial volume with the arch around it but is still canal.
    protect:
        Voxels known not to be bone (the core of the tracked spinal canal): a hole touching
        them is canal and never returned, however bright thick slices make its rim.
    """
    background = ~mask
    if axis is None:
        structure = ndimage.generate_binary_structure(3, 1)
    else:
        structure = plane_structure(axis)
    lab, n = ndimage.label(background, structure=structure)
    if n == 0:
        return np.zeros_like(mask)
    # A background region touching the array's edge (in 2-D: the plane's edge) is outside.
    faces = []
    for ax in range(3):
        if ax == axis:
            continue
        faces.append(np.take(lab, 0, axis=ax).ravel())
        faces.append(np.take(lab, lab.shape[ax] - 1, axis=ax).ravel())
    outside = np.unique(np.concatenate(faces))
    flat = lab.ravel()
    sizes = np.bincount(flat, minlength=n + 1)
    keep = sizes <= max_size
    keep[outside] = False
    keep[0] = False
    if protect is not None:
        keep[np.unique(lab[protect])] = False
    if keep.any():
        sel = keep[flat]
        sums = np.bincount(flat[sel], weights=values.ravel()[sel], minlength=n + 1)
        keep &= sums > min_mean * sizes
    return keep[lab]


def bone_mask(
    hu: np.ndarray,
    spacing: float,
    *,
    ring_hu: float,
    cortical_hu: float,
    trabecular_hu: float,
    max_hole_area_mm2: float = 4000.0,
    max_hole_volume_ml: float = 150.0,
    axes=(0, 1, 2),
    protect: np.ndarray | None = None,
    peel_layers: int = PEEL_LAYERS,
) -> tuple[np.ndarray, np.ndarray]:
    """Dense bone and filled bone of an HU array on an isotropic grid.

    Two thresholds because two jobs: a low one (``ring_hu``) keeps thin, partial-volumed
    cortical shells closed so that their marrow is recognised as enclosed; the outer surface
    is then peeled back to ``cortical_hu`` (about half the cortical brightness, where a
    blurred edge really lies) by removing outermost voxels below it.

    Parameters
    ----------
    hu:
        HU array (isotropic voxels of ``spacing`` mm).
    ring_hu:
        Threshold of the shells that enclose marrow.
    cortical_hu:
        Threshold of the bone's outer surface (>= ``ring_hu``).
    trabecular_hu:
        Enclosed regions whose mean HU is above this are marrow; darker ones (canal, fat,
        air, soft tissue caught between processes) are not bone.
    max_hole_area_mm2, max_hole_volume_ml:
        Size limits of 2-D and 3-D holes.
    axes:
        Plane normals along which 2-D holes are filled.
    protect:
        Voxels that are not bone whatever encloses them (see :func:`enclosed`).
    peel_layers:
        At most this many outer layers below ``cortical_hu`` are peeled.

    Returns
    -------
    dense, filled:
        ``hu > cortical_hu``, and the bone with its marrow.
    """
    ring = hu > ring_hu
    holes = enclosed(
        ring, None, int(max_hole_volume_ml * 1000 / spacing**3), hu, trabecular_hu, protect
    )
    max_area = int(max_hole_area_mm2 / spacing**2)
    for axis in axes:
        holes |= enclosed(ring, axis, max_area, hu, trabecular_hu, protect)
    filled = ring | holes
    dense = hu > cortical_hu
    if cortical_hu > ring_hu:
        # Peel the blurred skirt below the surface threshold, a layer at a time: only from
        # the outside, so enclosed marrow (also below it) stays.
        for layer in range(peel_layers):
            # Across slices (axis 2, where thick slices blur most) only the first layer:
            # deeper, the skirt is the slice profile of real bone, not the scanner's edge.
            structure = None if layer == 0 else plane_structure(2)
            outer = filled & ~ndimage.binary_erosion(filled, structure=structure, border_value=1)
            peel = outer & ~dense
            if not peel.any():
                break
            filled &= ~peel
    return dense, filled


def peel_skirt(mask: np.ndarray, hu: np.ndarray, floor_hu: float, layers: int = 2) -> np.ndarray:
    """Peel the blurred skirt of ``mask``, a layer at a time from the outside: voxels darker
    than halfway between soft tissue and the brightest bone within 2 mm (where the scanner's
    blur puts a bone's real edge, whatever its density), but never below ``floor_hu``.

    The second and later layers are peeled within axial planes only: across thick slices the
    skirt is the slice profile of real bone.  Interior voxels (marrow darker than its cortex)
    are never reached: only what lies on the outside is peeled.
    """
    box = tuple(
        slice(max(0, int(ix.min()) - 3), int(ix.max()) + 4) for ix in np.nonzero(mask)
    ) if mask.any() else tuple(slice(0, 0) for _ in mask.shape)
    sub, h = mask[box].copy(), hu[box]
    near_max = ndimage.maximum_filter(h, size=5)
    surface = np.maximum(0.5 * (SOFT_HU + near_max), floor_hu)
    for layer in range(layers):
        structure = None if layer == 0 else plane_structure(2)
        outer = sub & ~ndimage.binary_erosion(sub, structure=structure, border_value=1)
        peel = outer & (h < surface)
        if not peel.any():
            break
        sub &= ~peel
    out = np.zeros_like(mask)
    out[box] = sub
    return out


def half_max_skirt(bone: np.ndarray, solid: np.ndarray, smooth: np.ndarray, size,
                   in_planes: bool) -> np.ndarray:
    """The outermost layer of ``bone`` that is darker than halfway between soft tissue and
    the brightest of ``bone`` within ``size`` (a filter size, voxels): the blurred skirt
    outside the half-maximum edge.

    ``solid`` is everything labelled (``bone`` and its neighbours: a disc, the canal); only
    its outside counts as an outside, and the walls of holes enclosed in it do not.
    ``in_planes``: the layer and the holes are taken within the planes of axis 2 only.
    """
    if in_planes:
        filled = np.zeros_like(solid)
        for k in range(solid.shape[2]):
            filled[:, :, k] = ndimage.binary_fill_holes(solid[:, :, k])
        structure = plane_structure(2)
    else:
        filled, structure = ndimage.binary_fill_holes(solid), None
    peak = ndimage.maximum_filter(np.where(bone, smooth, -1000.0), size=size)
    outer = bone & ~ndimage.binary_erosion(filled, structure=structure, border_value=1)
    return outer & (smooth < SOFT_HU + 0.5 * (peak - SOFT_HU))
