"""Write a :class:`~.spec.Phantom` as a DICOM CT Image Storage series, and a phantom with its
ground truth as files (:func:`write_phantom`).

One file per slice, explicit VR little endian, 12-bit unsigned stored values with
RescaleIntercept -1024.  The geometry (ImageOrientationPatient, ImagePositionPatient,
PixelSpacing) is taken from the phantom's affine, so a correct converter rebuilds exactly
``phantom.ct``.  UIDs are derived from the seed and the spec, so writing the same phantom twice
gives the same files.  File names are hashes of the SOP Instance UID: they say nothing about
slice order, as in real exports.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

from ..atomic import atomic_path
from ..volume import LPS_TO_RAS, write_nifti
from .raster import make_phantom
from .scenarios import spec_for_seed
from .spec import ORIENTATIONS, Phantom

log = logging.getLogger(__name__)

INTERCEPT = -1024
_ENTROPY = "spine_idc.phantom"


def _ds(value: float) -> str:
    """A decimal string of at most 16 characters that reads back as the same float."""
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def phantom_uids(phantom: Phantom) -> dict[str, str]:
    """Study, series and frame-of-reference UIDs of a phantom (deterministic).

    The study UID depends on the seed only (one patient, one study); the series and frame of
    reference UIDs on the whole spec, so differently specified phantoms never share a series.
    """
    spec = phantom.spec
    seed = str(spec.seed)
    return {
        "study": generate_uid(entropy_srcs=[_ENTROPY, "study", seed]),
        "series": generate_uid(entropy_srcs=[_ENTROPY, "series", repr(spec)]),
        "frame": generate_uid(entropy_srcs=[_ENTROPY, "frame", repr(spec)]),
    }


def write_dicom_series(
    phantom: Phantom,
    out_dir: Path,
    *,
    series_instance_uid: str | None = None,
    study_instance_uid: str | None = None,
) -> list[Path]:
    """Write ``phantom.ct`` as one CT Image Storage file per slice into ``out_dir``.

    Parameters
    ----------
    phantom:
        From :func:`spine_idc.phantom.make_phantom`.
    out_dir:
        Folder to write into (created if missing); each file is written atomically.
    series_instance_uid, study_instance_uid:
        Override the UIDs derived from the seed (SOP Instance UIDs follow the series UID).

    Returns
    -------
    list of Path
        The files in slice order ``k`` (ascending along the slice normal), which is not the
        InstanceNumber order when ``spec.descending_order`` is set.
    """
    spec = phantom.spec
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    uids = phantom_uids(phantom)
    study = study_instance_uid or uids["study"]
    series = series_instance_uid or uids["series"]
    frame = uids["frame"] if series_instance_uid is None else generate_uid(
        entropy_srcs=[_ENTROPY, "frame", series])
    lps = LPS_TO_RAS @ phantom.ct.affine
    row, col = ORIENTATIONS[spec.patient_position]
    n_slices = phantom.ct.array.shape[2]
    date = datetime.date(2020, 1, 1) + datetime.timedelta(days=spec.seed % 1500)
    stored = phantom.ct.array
    if stored.min() < INTERCEPT or stored.max() > INTERCEPT + 4095:
        raise ValueError("phantom CT values do not fit 12 stored bits with intercept -1024")
    files = []
    for k in range(n_slices):
        sop = generate_uid(entropy_srcs=[_ENTROPY, "sop", series, str(k)])
        ipp = lps[:3, 3] + lps[:3, 2] * k
        number = n_slices - k if spec.descending_order else k + 1
        pixels = (stored[:, :, k].T.astype(np.int32) - INTERCEPT).astype("<u2")
        ds = _slice_dataset(spec, study, series, frame, sop, date)
        ds.InstanceNumber = number
        ds.ImagePositionPatient = [_ds(v) for v in ipp]
        ds.ImageOrientationPatient = [_ds(v) for v in (*row, *col)]
        ds.SliceLocation = _ds(float(ipp[2]))
        ds.Rows, ds.Columns = pixels.shape
        ds.PixelData = pixels.tobytes()
        path = out_dir / (hashlib.sha1(sop.encode()).hexdigest()[:20] + ".dcm")
        with atomic_path(path, suffix=".dcm") as tmp:
            ds.save_as(tmp, enforce_file_format=True)
        files.append(path)
    log.debug("wrote %d slices of phantom %d to %s", n_slices, spec.seed, out_dir)
    return files


def _slice_dataset(spec, study: str, series: str, frame: str, sop: str, date) -> pydicom.Dataset:
    """Everything of one slice but its position, number and pixels."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "SPINE_IDC_PH"
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop
    day, time = date.strftime("%Y%m%d"), "120000"
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = day
    ds.StudyTime, ds.SeriesTime = time, "120500"
    ds.AcquisitionTime = ds.ContentTime = "120510"
    ds.AccessionNumber = f"PH{spec.seed:08d}"
    ds.Modality = "CT"
    ds.Manufacturer = "spine-idc synthetic phantom"
    ds.ManufacturerModelName = "spine_idc.phantom"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "Synthetic spine CT phantom"
    ds.SeriesDescription = f"Phantom {spec.levels[0]}-{spec.levels[-1]}"
    ds.PatientName = f"Phantom^{spec.seed}"
    ds.PatientID = f"PHANTOM-{spec.seed:06d}"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.BodyPartExamined = "SPINE"
    ds.SliceThickness = _ds(spec.slice_thickness_mm)
    ds.SpacingBetweenSlices = _ds(spec.slice_spacing_mm)
    ds.KVP = "120"
    ds.PatientPosition = spec.patient_position
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.StudyID = f"{spec.seed % 100000}"
    ds.SeriesNumber = 1
    ds.AcquisitionNumber = 1
    ds.FrameOfReferenceUID = frame
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelSpacing = [_ds(spec.pixel_spacing_mm), _ds(spec.pixel_spacing_mm)]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter, ds.WindowWidth = "400", "1800"
    ds.RescaleIntercept = str(INTERCEPT)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    return ds


def write_phantom(seed: int, out_dir: Path, *, size: str = "test", levels=None) -> tuple[list[Path], Path]:
    """Generate phantom ``seed`` and write ``out_dir/dicom/*.dcm`` and ``out_dir/labels.nii.gz``.

    ``levels`` as for :func:`spec_for_seed`.

    Returns
    -------
    tuple
        The DICOM files (in slice order ``k``) and the path of the ground-truth label map.
    """
    phantom = make_phantom(spec_for_seed(seed, size=size, levels=levels))
    out_dir = Path(out_dir)
    files = write_dicom_series(phantom, out_dir / "dicom")
    labels_path = out_dir / "labels.nii.gz"
    write_nifti(phantom.labels, labels_path)
    log.info("phantom %d: %s, %d files", seed, ",".join(phantom.spec.levels), len(files))
    return files, labels_path
