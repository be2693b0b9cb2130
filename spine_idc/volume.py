"""The volume record that crosses stage boundaries, and its NIfTI form on disk.

Conventions used everywhere in the package:

* ``array`` is indexed ``[i, j, k]`` = ``[column, row, slice]`` of the source DICOM, slices
  sorted by position along the slice normal (ascending), so ``array[:, :, k]`` is the
  transposed pixel data of the ``k``-th instance in :attr:`SeriesInfo.sop_instance_uids`.
* ``affine`` maps ``(i, j, k, 1)`` to RAS millimetres, as NIfTI does.  DICOM patient
  coordinates (LPS) are ``diag(-1, -1, 1) @ affine``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from .atomic import atomic_path

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclasses.dataclass
class Volume:
    """A 3-D image on a physical grid: ``array[i, j, k]`` with a voxel-to-RAS ``affine``."""

    array: np.ndarray
    affine: np.ndarray

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"a volume is 3-D, got shape {self.array.shape}")
        self.affine = np.asarray(self.affine, dtype=float)
        if self.affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got {self.affine.shape}")

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm along i, j, k."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def voxel_volume_mm3(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3])))

    def same_grid(self, other: "Volume", atol: float = 1e-3) -> bool:
        return self.array.shape == other.array.shape and np.allclose(
            self.affine, other.affine, atol=atol
        )


def read_nifti(path: str | Path) -> Volume:
    """Read a NIfTI file into a :class:`Volume` (the array keeps its stored dtype)."""
    import nibabel as nib

    img = nib.load(str(path))
    return Volume(np.asarray(img.dataobj), img.affine)


def write_nifti(volume: Volume, path: str | Path) -> None:
    """Write a :class:`Volume` atomically; integer label maps stay integer."""
    import nibabel as nib

    img = nib.Nifti1Image(volume.array, volume.affine)
    img.set_qform(volume.affine, code=1)
    img.set_sform(volume.affine, code=1)
    with atomic_path(path, suffix=".nii.gz") as tmp:
        nib.save(img, str(tmp))


@dataclasses.dataclass
class SeriesInfo:
    """What downstream stages need to know about the source DICOM series of a volume.

    ``files`` and ``sop_instance_uids`` are in the volume's slice order (``k``).  When
    ``uids_repaired`` is true the source files carry blank UIDs and the UIDs here were derived
    deterministically from their content by the converter (an explicit user option).
    """

    series_key: str
    series_instance_uid: str
    study_instance_uid: str
    frame_of_reference_uid: str
    sop_class_uid: str
    sop_instance_uids: list[str]
    files: list[str]
    patient_id: str = ""
    modality: str = "CT"
    rows: int = 0
    columns: int = 0
    slice_spacing_mm: float = 0.0
    pixel_spacing_mm: tuple[float, float] = (0.0, 0.0)
    slice_thickness_mm: float | None = None
    transfer_syntax_uid: str = ""
    uids_repaired: bool = False
    warnings: list[str] = dataclasses.field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "SeriesInfo":
        data = json.loads(text)
        data["pixel_spacing_mm"] = tuple(data.get("pixel_spacing_mm", (0.0, 0.0)))
        return cls(**data)

    def write(self, path: str | Path) -> None:
        with atomic_path(path) as tmp:
            tmp.write_text(self.to_json())

    @classmethod
    def read(cls, path: str | Path) -> "SeriesInfo":
        return cls.from_json(Path(path).read_text())
