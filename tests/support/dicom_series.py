"""DICOM series for the tests: a synthetic CT written with pydicom, read back as a volume,
a SEG decoded to a label map, and dciodvfy's verdict on a file (shared by the SEG, SR,
publishing and network tests, and by ``bench/publish.py``)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from spine_idc import coding
from spine_idc.volume import LPS_TO_RAS, SeriesInfo, Volume

from .dciodvfy import dciodvfy_report

def load_series(folder: Path, *, pixels: bool = True) -> tuple[Volume, SeriesInfo]:
    """Read a single-frame CT series the way volume.py defines it (independent of convert).

    Without ``pixels`` the volume is all zeros on the right grid (for geometry-only tests).
    """
    files = sorted(p for p in Path(folder).iterdir() if p.is_file())
    dss = [pydicom.dcmread(p, stop_before_pixels=not pixels) for p in files]
    iop = np.asarray(dss[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    pos = [float(normal @ np.asarray(d.ImagePositionPatient, dtype=float)) for d in dss]
    order = np.argsort(pos)
    dss, files = [dss[i] for i in order], [files[i] for i in order]
    ps = np.asarray(dss[0].PixelSpacing, dtype=float)  # (between rows, between columns)
    m = np.eye(4)
    m[:3, 0] = iop[:3] * ps[1]
    m[:3, 1] = iop[3:] * ps[0]
    first = np.asarray(dss[0].ImagePositionPatient, dtype=float)
    last = np.asarray(dss[-1].ImagePositionPatient, dtype=float)
    m[:3, 2] = (last - first) / max(len(dss) - 1, 1) if len(dss) > 1 else normal
    m[:3, 3] = first
    if pixels:
        array = np.stack(
            [d.pixel_array.T * float(d.get("RescaleSlope", 1))
             + float(d.get("RescaleIntercept", 0)) for d in dss], axis=2,
        ).astype(np.float32)
    else:
        array = np.zeros((int(dss[0].Columns), int(dss[0].Rows), len(dss)), dtype=np.int16)
    info = SeriesInfo(
        series_key=dss[0].SeriesInstanceUID,
        series_instance_uid=dss[0].SeriesInstanceUID,
        study_instance_uid=dss[0].StudyInstanceUID,
        frame_of_reference_uid=dss[0].FrameOfReferenceUID,
        sop_class_uid=dss[0].SOPClassUID,
        sop_instance_uids=[d.SOPInstanceUID for d in dss],
        files=[str(f) for f in files],
        rows=int(dss[0].Rows),
        columns=int(dss[0].Columns),
    )
    return Volume(array, LPS_TO_RAS @ m), info


def write_synthetic_series(
    folder: Path,
    *,
    n_slices: int = 12,
    rows: int = 20,
    columns: int = 24,
    iop=(-1.0, 0.0, 0.0, 0.0, -1.0, 0.0),
    pixel_spacing=(0.8, 0.6),
    slice_step: float = 2.5,
    blank_uids: bool = False,
    descending: bool = True,
) -> list[Path]:
    """A tiny valid CT series; file ``00`` (InstanceNumber 1) is the *highest* slice along the
    normal (descending order), or the lowest with ``descending=False``."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    iop = np.asarray(iop, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    origin = np.array([30.0, 20.0, -100.0])
    paths = []
    for n in range(n_slices):
        ds = pydicom.Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        sop = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, "" if blank_uids else sop
        ds.StudyInstanceUID = "" if blank_uids else study
        ds.SeriesInstanceUID = "" if blank_uids else series
        ds.FrameOfReferenceUID = frame
        ds.PatientName, ds.PatientID = "Phantom^Spine", "PHANTOM1"
        ds.PatientBirthDate, ds.PatientSex = "19500101", "O"
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240102"
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
        ds.AccessionNumber, ds.StudyID, ds.ReferringPhysicianName = "A1", "S1", ""
        ds.Modality, ds.Manufacturer, ds.SeriesNumber, ds.InstanceNumber = "CT", "test", 3, n + 1
        ds.PatientPosition, ds.Laterality, ds.PositionReferenceIndicator = "HFS", None, ""
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImageOrientationPatient = [f"{v:g}" for v in iop]
        pos = origin + normal * slice_step * ((n_slices - 1 - n) if descending else n)
        ds.ImagePositionPatient = [f"{v:.4f}" for v in pos]
        ds.SliceLocation = f"{float(normal @ pos):.4f}"
        ds.PixelSpacing = [f"{v:g}" for v in pixel_spacing]
        ds.SliceThickness = f"{slice_step:g}"
        ds.KVP, ds.AcquisitionNumber = "120", 1
        ds.Rows, ds.Columns = rows, columns
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
        pixels = (np.arange(rows * columns, dtype=np.int16).reshape(rows, columns) + 10 * n)
        ds.PixelData = pixels.tobytes()
        path = folder / f"{n:02d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def two_level_labels(shape: tuple[int, int, int]) -> np.ndarray:
    """L1 (20) in the lower half of the slices, T12 (19) above it, an unnamed one at the top.

    The boxes are asymmetric in i and j so any transposition or flip would be caught.
    """
    ni, nj, nk = shape
    lab = np.zeros(shape, dtype=np.uint8)
    lab[1 : ni // 2, 2 : nj - 3, : max(nk // 2, 1)] = 20
    lab[ni // 3 : ni - 2, 1 : nj // 2, nk // 2 :] = 19
    if nk >= 6:
        lab[0:3, nj - 3 : nj, nk - 1] = 101  # touches the image edge, top slice
    return lab


def seg_to_label_map(seg, info: SeriesInfo) -> np.ndarray:
    """Decode a SEG back to an ``[i, j, k]`` label map on the source grid."""
    import highdicom as hd

    if not isinstance(seg, hd.seg.Segmentation):
        seg = hd.seg.Segmentation.from_dataset(seg)
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=info.sop_instance_uids,
        combine_segments=True,
        assert_missing_frames_are_empty=True,
    )  # (k, rows, columns) of segment numbers
    values = {int(s.SegmentNumber): _value_of(str(s.SegmentLabel)) for s in seg.SegmentSequence}
    lut = np.zeros(max(values) + 1, dtype=np.uint16)  # indexed by segment number
    for number, value in values.items():
        lut[number] = value
    return lut[pixels].transpose(2, 1, 0)


def _value_of(name: str) -> int:
    """The label value of a segment's label: a named level or disc, the canal, or a generic
    ``vertebraN`` / ``discN``."""
    if name in coding.LEVEL_BY_NAME:
        return coding.LEVEL_BY_NAME[name].value
    if name in coding.DISC_BY_NAME:
        return coding.DISC_BY_NAME[name].value
    if name.startswith("disc"):
        return coding.DISC_UNIDENTIFIED_BASE + int(name.removeprefix("disc")) - 1
    return coding.UNIDENTIFIED_BASE + int(name.removeprefix("vertebra")) - 1


def assert_valid(path: Path) -> list[str]:
    errors, warnings_ = dciodvfy_report(path)
    assert errors == [], "\n".join(errors)
    return warnings_
