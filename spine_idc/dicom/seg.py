"""DICOM Segmentation (SEG) of the vertebrae, built with highdicom.

One binary Segmentation instance per series, one segment per label value present (empty ones
get no segment), segments numbered cranio-caudally.  Every segment is described per the Segment
Description macro (PS3.3 C.8.20.4) from the label table of :mod:`spine_idc.coding`: category
"Anatomical Structure", type = the row's code (CID 7603 for C1-L5, CID 7151 for sacrum, spinal
cord and an unidentified vertebra, TotalSegmentator's code for S1), algorithm type AUTOMATIC with
the Algorithm Identification macro (family from CID 7162, name, version, parameters), the row's
recommended display colour (CIELab), and a tracking UID that the SR (TID 1411 "Tracking Unique
Identifier") repeats.  The Referenced Series Sequence lists every source instance, each frame
references its source instance (Derivation Image Sequence) and carries its position, and the SEG
keeps the source's frame of reference, so it lies on the CT grid whatever the orientation and
slice order.

Speed: highdicom visits every (segment, non-empty frame) pair of the label-map array it is given,
which is its cost; everything done here before that (ordering segments, mapping label values to
segment numbers) works on the bounding boxes of the labelled pixels of each frame, so that the
SEG of a 512x512x300 CT with 26 segments costs about the CPU time of dcmqi's
``itkimage2segimage`` (``bench/seg_dcmqi.py``).

UIDs are derived deterministically from the source series and the algorithm, so re-running a
series replaces its SEG instead of adding a second one next to it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .. import coding
from ..errors import InvalidSeriesError, SeriesError
from ..volume import LPS_TO_RAS, SeriesInfo, Volume
from .identity import (
    MANUFACTURER, AlgorithmInfo, output_uid, pin_volatile, save_dataset, source_date_time,
    tracking_uid,
)

log = logging.getLogger(__name__)

SEG_SERIES_NUMBER = 901


def read_source_headers(info: SeriesInfo) -> list:
    """Headers of the source instances in slice order ``k`` (pixel data is not read).

    When ``info.uids_repaired`` the files carry blank UIDs; the repaired ones from ``info`` are
    set on the in-memory datasets (never on disk) so that the SEG references what the rest of
    the pipeline calls these instances.
    """
    import pydicom

    datasets = []
    for k, path in enumerate(info.files):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as exc:  # pydicom raises several types for a corrupt file
            raise InvalidSeriesError(
                info.series_key, "unreadable-source", f"cannot read source instance: {exc}",
                path=str(path),
            ) from exc
        if "SpecificCharacterSet" in ds and not ds.SpecificCharacterSet:
            # An empty value means the default repertoire; highdicom rejects the empty string.
            del ds.SpecificCharacterSet
        if info.uids_repaired:
            if not ds.get("SOPClassUID"):  # blank too in real files with blank UIDs
                ds.SOPClassUID = info.sop_class_uid or ds.file_meta.MediaStorageSOPClassUID
            ds.StudyInstanceUID = info.study_instance_uid
            ds.SeriesInstanceUID = info.series_instance_uid
            ds.SOPInstanceUID = info.sop_instance_uids[k]
            # Repair covers invalid (not just blank) UIDs: take the repaired one in every case.
            ds.FrameOfReferenceUID = info.frame_of_reference_uid
        elif ds.get("SOPInstanceUID") != info.sop_instance_uids[k]:
            raise SeriesError(
                info.series_key, "source-mismatch",
                f"slice {k}: SOPInstanceUID {ds.get('SOPInstanceUID')!r} is not the one in "
                f"series.json ({info.sop_instance_uids[k]!r})", path=str(path),
            )
        datasets.append(ds)
    return datasets


def check_geometry(labels: Volume, datasets: Sequence, info: SeriesInfo) -> None:
    """Raise :class:`SeriesError` ("seg-geometry-mismatch") unless the label grid is the source's.

    Instance ``k`` must have Rows x Columns = ``shape[1] x shape[0]``, orientation equal to the
    affine's first two axes (in LPS), Pixel Spacing = (j, i) voxel size, and its Image Position
    at voxel ``(0, 0, k)``; positions are allowed a tenth of the smallest voxel size.
    """
    ni, nj, nk = labels.array.shape
    m = LPS_TO_RAS @ labels.affine
    spacing = np.linalg.norm(m[:3, :3], axis=0)
    row_dir, col_dir = m[:3, 0] / spacing[0], m[:3, 1] / spacing[1]
    tol = 0.1 * float(spacing.min())

    def fail(k: int, what: str) -> None:
        raise SeriesError(
            info.series_key, "seg-geometry-mismatch",
            f"label map grid does not match source slice {k}: {what}", path=str(info.files[k]),
        )

    if len(datasets) != nk:
        raise SeriesError(
            info.series_key, "seg-geometry-mismatch",
            f"label map has {nk} slices but the series has {len(datasets)} instances",
        )
    for k, ds in enumerate(datasets):
        if (int(ds.Rows), int(ds.Columns)) != (nj, ni):
            fail(k, f"{ds.Rows}x{ds.Columns} pixels, label slice is {nj}x{ni}")
        iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
        if not np.allclose(iop, np.r_[row_dir, col_dir], atol=1e-3):
            fail(k, f"orientation {iop.tolist()} vs {np.r_[row_dir, col_dir].round(4).tolist()}")
        ps = np.asarray(ds.PixelSpacing, dtype=float)
        if not np.allclose(ps, spacing[[1, 0]], rtol=1e-3, atol=1e-4):
            fail(k, f"pixel spacing {ps.tolist()} vs {spacing[[1, 0]].round(4).tolist()}")
        ipp = np.asarray(ds.ImagePositionPatient, dtype=float)
        expected = m[:3, 3] + k * m[:3, 2]
        if np.linalg.norm(ipp - expected) > tol:
            fail(k, f"position {ipp.tolist()} vs {expected.round(3).tolist()}")


def _frames_view(labels: Volume) -> np.ndarray:
    """The label map as ``[k, j, i]`` (frames x rows x columns), without copying.

    NIfTI arrays (nibabel) are Fortran-ordered, so this view is C-contiguous: every frame is
    one block of memory and the per-frame work below reads it once.
    """
    return np.asarray(labels.array).transpose(2, 1, 0)


def _frame_boxes(frames: np.ndarray) -> list[tuple[int, slice, slice]]:
    """``(k, rows, columns)`` of the bounding box of the labelled pixels of every non-empty frame.

    Vertebrae fill about 1 % of a CT: the per-value work below runs on these boxes only, after
    two cheap passes (any) over the whole map.
    """
    flat = frames.reshape(frames.shape[0], -1)
    boxes = []
    for k in np.flatnonzero(flat.any(axis=1)):
        frame = frames[k]
        rows = np.flatnonzero(frame.any(axis=1))
        cols = np.flatnonzero(frame[rows[0] : rows[-1] + 1].any(axis=0))
        boxes.append((int(k), slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)))
    return boxes


def _slice_counts(frames: np.ndarray, boxes) -> np.ndarray:
    """``counts[k, v]``: pixels of label value ``v`` in frame ``k``."""
    top = int(frames.max())
    counts = np.zeros((frames.shape[0], top + 1), dtype=np.int64)
    for k, rows, cols in boxes:
        counts[k] = np.bincount(frames[k, rows, cols].ravel(), minlength=top + 1)
    return counts


def _order(frames: np.ndarray, counts: np.ndarray, affine: np.ndarray) -> list[int]:
    """Label values present, cranio-caudally (see :func:`segment_order`)."""
    present = [int(v) for v in np.flatnonzero(counts[:, 1:].any(axis=0)) + 1]
    m = LPS_TO_RAS @ affine

    def superior_mm(v: int) -> float:
        # Height of the bounding-box centre: its slab from the per-frame counts, then its
        # extent in the frame from that slab only.
        ks = np.flatnonzero(counts[:, v])
        inside = frames[ks[0] : ks[-1] + 1] == v
        js = np.flatnonzero(inside.any(axis=(0, 2)))
        is_ = np.flatnonzero(inside.any(axis=(0, 1)))
        centre = [(is_[0] + is_[-1]) / 2.0, (js[0] + js[-1]) / 2.0, (ks[0] + ks[-1]) / 2.0]
        return float(m[2, :3] @ centre + m[2, 3])

    rows = {v: coding.level_for_value(v) for v in present}
    named = sorted((v for v in present
                    if not coding.is_unidentified_vertebra(v) and rows[v].is_vertebra),
                   key=lambda v: rows[v].rank)
    others = sorted((v for v in present if not rows[v].is_vertebra), key=lambda v: rows[v].rank)
    unnamed = [v for v in present if coding.is_unidentified_vertebra(v)]
    heights = {v: superior_mm(v) for v in unnamed}
    order: list[int] = []
    for v in named:
        if unnamed:
            top = superior_mm(v)
            while unnamed and heights[unnamed[0]] > top:
                order.append(unnamed.pop(0))
        order.append(v)
    return order + unnamed + others


def segment_order(labels: Volume) -> list[int]:
    """Label values present, cranio-caudally.

    Named vertebrae by their place in the spine (:attr:`spine_idc.coding.Level.rank`: S1 after
    L5, then the sacrum), unidentified vertebrae (>= 101, numbered cranio-caudally) slotted in
    by the height of their bounding-box centre, and structures that are not vertebrae (the
    spinal cord) last.
    """
    frames = _frames_view(labels)
    return _order(frames, _slice_counts(frames, _frame_boxes(frames)), labels.affine)


def build_seg(
    labels: Volume,
    info: SeriesInfo,
    algorithm: AlgorithmInfo,
    *,
    series_number: int = SEG_SERIES_NUMBER,
    content_label: str = "VERTEBRAE",
):
    """Build the binary DICOM Segmentation of a vertebra label map.

    Parameters
    ----------
    labels:
        Label map on the grid of the source series (``array[:, :, k].T`` is the frame of source
        instance ``k``), values per :mod:`spine_idc.coding`.
    info:
        The source series (its ``files`` are read for their headers only).
    algorithm:
        What produced the labels; goes into the Segment Description's algorithm identification
        and, with the source series UID, into the deterministic UIDs.
    series_number, content_label:
        Series Number and Content Label (0070,0080) of the SEG.

    Returns
    -------
    highdicom.seg.Segmentation
        A pydicom Dataset; empty frames are omitted.  The Referenced Series Sequence lists
        every source instance; each frame references its source instance.

    Raises
    ------
    SeriesError
        If the label grid does not match the source geometry ("seg-geometry-mismatch"), the
        label map is empty ("empty-segmentation"), or a source file is unreadable.
    ValueError
        If the label map is not a non-negative integer array.
    """
    import highdicom as hd

    t0 = time.perf_counter()
    frames = _frames_view(labels)
    if frames.dtype.kind not in "iu" or (frames.dtype.kind == "i" and frames.min() < 0):
        raise ValueError(f"labels must be a non-negative integer array, got {frames.dtype}")
    datasets = read_source_headers(info)
    check_geometry(labels, datasets, info)
    boxes = _frame_boxes(frames)
    counts = _slice_counts(frames, boxes)
    order = _order(frames, counts, labels.affine)
    if not order:
        raise SeriesError(info.series_key, "empty-segmentation", "the label map has no vertebrae")

    descriptions = []
    for number, value in enumerate(order, start=1):
        level = coding.level_for_value(value)
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=level.name,
                segmented_property_category=coding.CATEGORY_ANATOMICAL_STRUCTURE,
                segmented_property_type=level.code,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=hd.AlgorithmIdentificationSequence(
                    name=algorithm.name,
                    family=algorithm.family,
                    version=algorithm.version,
                    source=MANUFACTURER,
                    parameters=dict(algorithm.parameters) or None,
                ),
                tracking_uid=tracking_uid(info, algorithm, level.name),
                tracking_id=level.name,
                display_color=hd.color.CIELabColor.from_rgb(*level.rgb),
            )
        )
    # Label values -> segment numbers through a lookup table: the frames x rows x columns
    # label-map array that highdicom splits into one binary frame per segment and source
    # instance, skipping empty ones.
    lut = np.zeros(counts.shape[1], dtype=np.uint8 if len(order) < 256 else np.uint16)
    lut[order] = np.arange(1, len(order) + 1)
    segment_frames = np.zeros(frames.shape, dtype=lut.dtype)
    for k, rows, cols in boxes:
        segment_frames[k, rows, cols] = lut[frames[k, rows, cols]]

    seg = hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=segment_frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=output_uid(info, algorithm, "seg", "series"),
        series_number=series_number,
        sop_instance_uid=output_uid(info, algorithm, "seg", "instance"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=algorithm.name,
        software_versions=algorithm.version,
        device_serial_number=algorithm.version,
        content_label=content_label,
        content_description=f"Vertebrae by {algorithm.name} {algorithm.version}"[:64],
        series_description=f"Vertebrae ({algorithm.name})"[:64],
        omit_empty_frames=True,
    )
    pin_volatile(seg, info, algorithm, "seg", source_date_time(datasets))
    _unsigned_slice_spacing(seg)
    log.info(
        "%s: SEG with %d segments, %d frames built in %.1f s",
        info.series_key, len(order), int(seg.NumberOfFrames), time.perf_counter() - t0,
    )
    return seg


def _unsigned_slice_spacing(seg) -> None:
    """Spacing Between Slices is a distance (dciodvfy: "not permitted to be negative"), but highdicom
    copies it from the source, and some scanners write it signed along their slice order (a
    Philips thorax in ``../shared/data/real`` has -2.0): dciodvfy rejects the SEG then."""
    for group in seg.SharedFunctionalGroupsSequence:
        for measures in group.get("PixelMeasuresSequence", []):
            value = measures.get("SpacingBetweenSlices")
            if value is not None and float(value) < 0:
                measures.SpacingBetweenSlices = abs(float(value))


def write_seg(
    labels: Volume,
    info: SeriesInfo,
    algorithm: AlgorithmInfo,
    path: str | Path,
    **kwargs,
) -> Path:
    """:func:`build_seg` and write the result to ``path`` atomically; returns ``path``."""
    seg = build_seg(labels, info, algorithm, **kwargs)
    t0 = time.perf_counter()
    out = save_dataset(seg, path)
    log.info("%s: SEG written to %s in %.1f s", info.series_key, out, time.perf_counter() - t0)
    return out
