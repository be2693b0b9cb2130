"""What a phantom is: its specification, the generated result, and the codes they use.

The ground floor of :mod:`spine_idc.phantom`: the other modules build on these records.
"""

from __future__ import annotations

import dataclasses
import enum

from .. import coding
from ..volume import Volume

#: PatientPosition -> (row direction, column direction) of ImageOrientationPatient, in LPS.
ORIENTATIONS = {
    "HFS": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "FFS": ((-1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "HFP": ((-1.0, 0.0, 0.0), (0.0, -1.0, 0.0)),
    "FFP": ((1.0, 0.0, 0.0), (0.0, -1.0, 0.0)),
}


NAMES = tuple(lv.name for lv in coding.LEVELS)  # C1 ... L5, sacrum in cranio-caudal order


HU_MIN, HU_MAX = -1024, 3071  # what 12 stored bits with intercept -1024 can hold


#: What :attr:`PhantomSpec.features` may hold.
FEATURES = (
    "faint", "thin-discs", "contrast-aorta", "crop-arches", "crop-side", "metal", "T13", "L6",
    "sacralised-L5", "neighbours",
)


#: HU of metal (the largest value 12 stored bits hold).
METAL_HU = 3071.0


class Tissue(enum.IntEnum):
    """Tissue class of each voxel centre in :attr:`Phantom.tissues` (phantom-internal codes)."""

    AIR = 0
    LUNG = 1
    FAT = 2
    SOFT = 3
    CSF = 4
    CORD = 5
    DISC = 6
    BLOOD = 7
    CORTICAL = 8
    TRABECULAR = 9
    OTHER_BONE = 10  # ribs, sternum, ilium: bone that carries no vertebra label
    METAL = 11  # pedicle screws


@dataclasses.dataclass(frozen=True)
class PhantomSpec:
    """Everything that defines a phantom; :func:`spec_for_seed` derives it from a seed.

    ``levels`` are the named levels drawn (and labelled); bone of levels not listed is not
    drawn.  ``shape`` is ``(columns, rows, slices)`` of the written series.  The field of view
    is centred on the listed levels' vertebral bodies, shifted along the patient axis by
    ``fov_offset_mm``.  ``curvature_mm`` is the nominal sagitta of the lumbar lordosis (the
    thoracic kyphosis and cervical lordosis scale with it), ``scoliosis_mm`` the lateral
    amplitude of a mild scoliotic curve, ``noise_hu`` the standard deviation of image noise.
    ``descending_order`` makes InstanceNumber run against the slice normal.

    ``features`` make a phantom as hard as real CT (see :data:`FEATURES`): faint osteoporotic
    bone, thin thoracic discs with sclerotic endplates, a contrast-filled aorta against the
    bodies, crops through the arches or a body's side, metal with streaks, transitional
    anatomy (``T13``, ``L6``, ``sacralised-L5``), and ``neighbours``: the levels just beyond
    the view drawn and labelled too (a real scan always shows the next vertebra's edge).
    """

    seed: int
    levels: tuple[str, ...]
    shape: tuple[int, int, int]
    pixel_spacing_mm: float
    slice_spacing_mm: float
    slice_thickness_mm: float
    trabecular_hu: float
    curvature_mm: float
    patient_position: str
    descending_order: bool
    scoliosis_mm: float = 0.0
    noise_hu: float = 15.0
    fov_offset_mm: float = 0.0
    features: tuple[str, ...] = ()


@dataclasses.dataclass
class Phantom:
    """A generated phantom: CT in HU, ground-truth labels and the tissue map, on one grid.

    ``ct`` is int16 HU in the :mod:`spine_idc.volume` conventions for the series
    :func:`write_dicom_series` writes; ``labels`` uses :mod:`spine_idc.coding` values (each
    vertebra's whole bone, no discs, no ribs); ``tissues`` holds :class:`Tissue` codes and
    ``tissue_hu`` the nominal HU drawn for each tissue (before texture, blur and noise).
    """

    spec: PhantomSpec
    ct: Volume
    labels: Volume
    trabecular_hu_by_level: dict[str, float]
    tissues: Volume | None = None
    tissue_hu: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def names(self) -> tuple[str, ...]:
        """The levels in view by their true names, cranio-caudally (the transitional features
        rename: with ``T13`` the geometric L1 is T13 and L2-L5 are L1-L4; with ``L6`` the
        first sacral segment is a free L6)."""
        out = []
        for n in self.spec.levels:
            if n == "sacrum" and "L6" in self.spec.features:
                out.append("L6")
            out.append(true_name(n, self.spec.features))
        return tuple(out)


def true_name(name: str, features=()) -> str:
    """A geometric level's name in the anatomy ``features`` describe (see
    :attr:`Phantom.names`)."""
    if "T13" in features and name in ("L1", "L2", "L3", "L4", "L5"):
        return "T13" if name == "L1" else f"L{int(name[1]) - 1}"
    return name
