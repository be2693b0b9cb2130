"""Test helpers: write small valid CT series with pydicom, then damage them file by file.

The synthetic series encode their own geometry in the pixels: the stored value of row ``r``,
column ``c`` of the slice at position index ``k`` (ascending along the slice normal) is
``c + 32 * r + 1024 * k``, so a converted volume must satisfy
``array[i, j, k] == i + 32 * j + 1024 * k + intercept``.  Files are named at random and
InstanceNumber runs against the position, so a reader that sorts by either is caught.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"
TS_DICOM = SHARED_DATA / "real" / "ts_t11_t12" / "dicom"
TS_LABELS = SHARED_DATA / "real" / "ts_t11_t12" / "labels_totalsegmentator.nii.gz"
CT3_DICOM = SHARED_DATA / "real" / "dcmqi_ct3" / "dicom"


def expected_hu(rows: int, cols: int, n: int, intercept: float = -1024.0) -> np.ndarray:
    """The ``[i, j, k]`` array a correct reader makes of :func:`write_ct_series` output."""
    i, j, k = np.meshgrid(np.arange(cols), np.arange(rows), np.arange(n), indexing="ij")
    return i + 32 * j + 1024 * k + intercept


def write_ct_series(
    out_dir: Path,
    *,
    n_slices: int = 12,
    rows: int = 24,
    cols: int = 20,
    slice_spacing: float = 2.5,
    pixel_spacing: tuple[float, float] = (0.8, 0.7),
    iop: tuple[float, ...] = (1, 0, 0, 0, 1, 0),
    origin: tuple[float, float, float] = (-10.0, -20.0, 30.0),
    slope: float = 1.0,
    intercept: float = -1024.0,
    seed: int = 0,
    modality: str = "CT",
    series_uid: str | None = None,
    study_uid: str | None = None,
) -> list[Path]:
    """Write a valid single-frame CT series; return its files in position order ``k``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    for_uid = generate_uid()
    row_dir, col_dir = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
    normal = np.cross(row_dir, col_dir)
    files = []
    for k in range(n_slices):
        ipp = np.asarray(origin) + k * slice_spacing * normal
        pixels = (np.arange(cols)[None, :] + 32 * np.arange(rows)[:, None] + 1024 * k)
        ds = _dataset(rows, cols, pixels.astype(np.uint16), modality)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.FrameOfReferenceUID = for_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = n_slices - k  # against the position on purpose
        ds.ImagePositionPatient = [f"{v:.6f}" for v in ipp]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in iop]
        ds.PixelSpacing = [f"{v:.6f}" for v in pixel_spacing]
        ds.SliceThickness = f"{slice_spacing:g}"
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:g}", f"{intercept:g}"
        path = out_dir / f"{rng.getrandbits(40):010x}"  # names unrelated to the order
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def _dataset(rows: int, cols: int, pixels: np.ndarray, modality: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.Modality = modality
    ds.PatientID = "FAULTS-001"
    ds.SeriesDescription = "synthetic fault-test series"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = pixels.tobytes()
    return ds


def edit(path: Path, **attrs) -> None:
    """Set (value) or delete (``None``) attributes of one file in place."""
    ds = pydicom.dcmread(path)
    for keyword, value in attrs.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path)


def truncate(path: Path, fraction: float = 0.6) -> None:
    """Cut a file short, as an interrupted copy or download would."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def tilt(files: list[Path], degrees: float) -> None:
    """Shift each slice along its row direction in proportion to its height (gantry tilt)."""
    datasets = [pydicom.dcmread(f) for f in files]
    iop = np.asarray([float(v) for v in datasets[0].ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    ipps = [np.asarray([float(v) for v in ds.ImagePositionPatient]) for ds in datasets]
    heights = [float((p - ipps[0]) @ normal) for p in ipps]
    for f, ds, p, h in zip(files, datasets, ipps, heights):
        shifted = p + np.tan(np.radians(degrees)) * h * iop[3:]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in shifted]
        ds.save_as(f)


def copy_series(files: list[Path], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy(f, out_dir / f.name)) for f in files]


def real_series_with_uids(src_dir: Path, out_dir: Path) -> list[Path]:
    """Copy a real series decompressed (explicit VR little endian) with fresh valid UIDs.

    The source ``ts_t11_t12`` series has blank UIDs; this turns it into a valid series whose
    pixels and geometry are real.  Files come back in sorted source-name order.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    out = []
    for src in sorted(src_dir.iterdir()):
        ds = pydicom.dcmread(src)
        ds.decompress()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        path = out_dir / src.name
        ds.save_as(path, enforce_file_format=True)
        out.append(path)
    return out
