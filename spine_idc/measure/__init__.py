"""Per-vertebra measurements on a CT and its label maps: a registry of quantities.

Each quantity is a module of this package that declares the fields it adds to
:class:`VertebraMeasurement` (``FIELDS``), measures them for one vertebra (``measure``), says how they are coded as TID 300
measurements in the SR (``sr_items``) and, where it has any, which keys of the config's
``measure`` section it reads (``OPTIONS``).  The registry
:data:`MEASUREMENTS` lists them in the order their fields and SR items appear.  A new
measurement is one new module and one line here; the record, its JSON, the cohort table's
columns and the SR follow from the registry.

What is measured for every label value present (values per :mod:`spine_idc.coding`):

* :mod:`.size`: voxel count and volume of the whole vertebra (``labels``);
* :mod:`.attenuation`: attenuation of the **trabecular core** -- the vertebral body
  (``bodies``) eroded by ``erosion_mm`` in physical units, which removes the cortical shell
  (about 1 mm thick) and partial-volume voxels at the endplates, so the mean/median HU
  describe cancellous bone as used for opportunistic osteoporosis screening;
* :mod:`.position`: the centroid in DICOM patient coordinates (LPS, mm);
* :mod:`.heights`: anterior, middle and posterior heights of the vertebral body along the
  spine's long axis and their ratio min(anterior, middle) / posterior, the quantity the Genant
  semi-quantitative method grades compression fractures by;
* :mod:`.border`: whether the vertebra touches the edge of the image (then it may be cut off
  and its volume and heights are lower bounds).

Geometry conventions follow :mod:`spine_idc.volume`: voxel indices ``(i, j, k)`` map to RAS by
``affine``; LPS is ``diag(-1, -1, 1) @ affine``.  All distances are in mm in patient space, so
anisotropic, oblique or flipped grids give the same answers as isotropic ones.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
from scipy import ndimage

from ..volume import LPS_TO_RAS, Volume
from . import attenuation, border, heights, position, size
from .attenuation import MIN_TRABECULAR_VOXELS
from .base import Vertebra, to_lps
from .heights import body_heights, long_axis

log = logging.getLogger(__name__)

#: The quantities measured, in the order of their fields and SR items.
MEASUREMENTS = (size, attenuation, position, heights, border)

VertebraMeasurement = dataclasses.make_dataclass(
    "VertebraMeasurement",
    [("level", str), ("label_value", int)] + [f for q in MEASUREMENTS for f in q.FIELDS],
    frozen=True,
    namespace={"__module__": __name__, "__doc__": (
        "Measurements of one vertebra (one label value): its level and label value, then the "
        "fields of each quantity in :data:`MEASUREMENTS` (a field is ``None`` where its "
        "quantity could not be measured, e.g. heights without a body).")},
)

__all__ = ["MEASUREMENTS", "MIN_TRABECULAR_VOXELS", "Vertebra", "VertebraMeasurement",
           "body_heights", "long_axis", "measure_vertebrae", "options", "sr_items", "table_columns",
           "table_row"]


def options() -> dict[str, float]:
    """The ``measure`` section's keys that the quantities read, with their defaults."""
    return {k: v for q in MEASUREMENTS for k, v in getattr(q, "OPTIONS", {}).items()}


def table_columns() -> list[str]:
    """The cohort table's measurement columns: each quantity's ``COLUMNS`` where it spreads a
    field over several (the centroid's x, y, z), else its field names."""
    return ["level", "label_value"] + [
        c for q in MEASUREMENTS
        for c in getattr(q, "COLUMNS", [f[0] for f in q.FIELDS])]


def table_row(m) -> dict:
    """``m`` as the cohort table's measurement columns (see :func:`table_columns`)."""
    out = {"level": m.level, "label_value": m.label_value}
    for q in MEASUREMENTS:
        row = getattr(q, "row", None)
        out.update(row(m) if row else {f[0]: getattr(m, f[0]) for f in q.FIELDS})
    return out


def sr_items(m, site) -> list:
    """The TID 300 measurements of ``m`` for the SR, quantity by quantity (``site``: the
    vertebra's finding site code)."""
    return [item for q in MEASUREMENTS for item in q.sr_items(m, site)]


def measure_vertebrae(
    ct: Volume,
    labels: Volume,
    bodies: Volume,
    *,
    axis_lps: dict[int, tuple[float, float, float]] | None = None,
    erosion_mm: float = 3.0,
) -> list:
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
    from ..coding import level_for_value

    if not (labels.same_grid(ct) and bodies.same_grid(ct)):
        raise ValueError("ct, labels and bodies must share one voxel grid (shape and affine)")
    lab = np.asarray(labels.array)
    bod = np.asarray(bodies.array)
    if lab.dtype.kind not in "iu" or bod.dtype.kind not in "iu":
        raise ValueError("labels and bodies must be integer label maps")
    m_lps = LPS_TO_RAS @ ct.affine  # diag(-1, -1, 1) is its own inverse: RAS -> LPS
    options = {"erosion_mm": erosion_mm}
    # Bounding boxes once for all labels: each vertebra is then measured on a small crop instead
    # of scanning the whole volume per label.
    lab_boxes = ndimage.find_objects(lab)
    bod_boxes = ndimage.find_objects(bod)
    results = []
    for value in range(1, len(lab_boxes) + 1):
        box = lab_boxes[value - 1]
        if box is None:
            continue
        idx = np.argwhere(lab[box] == value) + [s.start for s in box]
        level = level_for_value(value)
        v = Vertebra(value=value, level=level.name, ct=ct, m_lps=m_lps, box=box,
                     shape=lab.shape, idx=idx, pts=to_lps(idx, m_lps), options=options,
                     axis_lps=None if axis_lps is None else axis_lps.get(value))
        bbox = bod_boxes[value - 1] if value <= len(bod_boxes) else None
        if bbox is not None:
            v.body_box = bbox
            v.body_mask = bod[bbox] == value
            v.body_pts = to_lps(np.argwhere(v.body_mask) + [s.start for s in bbox], m_lps)
        elif level.is_vertebra:  # discs and the canal have no body
            log.warning("%s (label %d): no vertebral body voxels; no heights or HU", level.name,
                        value)
        fields = {}
        for q in MEASUREMENTS:
            fields.update(q.measure(v))
        results.append(VertebraMeasurement(level=level.name, label_value=value, **fields))
    return results
