"""One DICOM CT series -> a :class:`~spine_idc.volume.Volume` in HU and its :class:`SeriesInfo`.

Every problem that would make the volume wrong or unusable (unreadable files, mixed series,
missing or duplicated slices, tilted or mixed geometry, scouts, blank UIDs) raises
:class:`~spine_idc.errors.InvalidSeriesError` with a stable ``reason``:

``unreadable``, ``not-ct``, ``localizer``, ``multi-frame``, ``mixed-series``, ``blank-uid``,
``duplicate-uid``, ``duplicate-position``, ``bad-rescale``, ``implausible-hu``, ``missing-geometry``, ``mixed-geometry``, ``too-few-slices``,
``gantry-tilt``, ``missing-slices``, ``irregular-spacing``.

The volume follows the conventions of :mod:`spine_idc.volume`: ``array[i, j, k]`` = column
``i``, row ``j`` of the ``k``-th slice, slices ascending along ``n = row_dir x col_dir``.

Over 400 lines: every check that decides whether one series makes a valid volume, and the
reason each gives, is in this one module, so that the list above is complete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import InvalidSeriesError
from .uids import is_valid_uid
from .volume import LPS_TO_RAS, SeriesInfo, Volume, write_nifti

logger = logging.getLogger(__name__)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_STORAGES = {"1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.2.2"}
REPAIR_HINT = "set `convert.repair_blank_uids: true` to derive UIDs deterministically"
_UID_ATTRS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")
_GEOM_ATOL = 1e-4  # DS values carry ~6 decimals; larger differences are real differences
_SCOUT_MIN_ANGLE_DEG = 10.0  # a stray slice this far off-axis is a projection, not a stack


@dataclasses.dataclass(frozen=True)
class ConvertOptions:
    """Options of :func:`load_series` (the ``convert`` section of the configuration).

    Attributes
    ----------
    min_slices:
        Series with fewer slices are rejected (``too-few-slices``).
    repair_blank_uids:
        Replace blank or invalid Study/Series/SOP Instance/Frame of Reference UIDs by UIDs
        derived from the files' content instead of rejecting the series (``blank-uid``).
    max_gap_ratio:
        A step between neighbouring slices larger than this multiple of the median step means
        slices are missing (``missing-slices``).
    spacing_rtol:
        Any other step differing from the median by more than this fraction of it is
        ``irregular-spacing``: a uniform grid would misplace the slices.
    allow_gantry_tilt:
        Accept slice positions that drift off the slice normal; the affine is then sheared
        (its third column is the mean step between slice positions), which places every
        voxel exactly but is not the ``n * spacing`` column of an untilted series.
    """

    min_slices: int = 10
    repair_blank_uids: bool = False
    max_gap_ratio: float = 1.5
    spacing_rtol: float = 0.1
    allow_gantry_tilt: bool = False


@dataclasses.dataclass
class _Slice:
    path: str
    ds: object  # pydicom Dataset, pixels not yet decoded
    digest: str  # sha256 of the file bytes: the entropy for repaired UIDs
    uids: dict[str, str]
    ipp: np.ndarray | None = None
    iop: np.ndarray | None = None
    ps: np.ndarray | None = None
    shape: tuple[int, int] = (0, 0)


def _text(ds, keyword: str) -> str:
    # pydicom converts values lazily: a malformed element raises on access, not in dcmread,
    # and must read as absent (then checked like a missing value) rather than crash.
    try:
        value = ds.get(keyword, "")
        return "" if value is None else str(value).strip()
    except Exception:
        return ""


def _int(ds, keyword: str, default: int) -> int | None:
    """An integer attribute; ``None`` if present but malformed."""
    try:
        value = ds.get(keyword)
        return default if value in (None, "") else int(value)
    except Exception:
        return None


def _image_type(ds) -> list[str]:
    try:
        value = ds.get("ImageType") or []
    except Exception:
        return []
    # A single-valued ImageType is a str; iterating it would give characters.
    values = [value] if isinstance(value, str) else list(value)
    return [str(v).strip().upper() for v in values]


def _number(ds, keyword: str) -> float | None:
    try:
        value = float(ds.get(keyword))
    except Exception:  # absent, malformed, or a value pydicom cannot convert
        return None
    return value if np.isfinite(value) else None


def _floats(ds, keyword: str, n: int) -> np.ndarray | None:
    try:
        value = np.asarray([float(v) for v in ds.get(keyword) or []], dtype=float)
    except Exception:
        return None
    return value if value.shape == (n,) and np.all(np.isfinite(value)) else None


def _read(path: str, key: str) -> _Slice:
    import pydicom

    fail = _failer(key)
    try:
        data = Path(path).read_bytes()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(io.BytesIO(data))
    except Exception as exc:
        fail("unreadable", f"cannot parse the file as DICOM ({exc})", path)
    # pydicom only warns when a file ends early; a truncated file must not pass as valid.
    for w in caught:
        if "End of file" in str(w.message):
            fail("unreadable", f"the file ends early: {w.message}", path)
    # A non-CT object without pixels (an SR, say) is better reported as not-ct, later.
    if "PixelData" not in ds and _text(ds, "Modality") in ("", "CT"):
        fail("unreadable", "no Pixel Data element: the file is truncated or holds no image", path)
    uids = {a: _text(ds, a) for a in _UID_ATTRS}
    return _Slice(path, ds, hashlib.sha256(data).hexdigest(), uids)


def _failer(key: str):
    def fail(reason: str, message: str, path: str | None = None, hint: str | None = None):
        raise InvalidSeriesError(key, reason, message, path=path, hint=hint)

    return fail


def _check_kind(slices: list[_Slice], fail) -> tuple[str, list[str]]:
    """Reject localizers, non-CT and multi-frame files; return the SOP class and warnings."""
    notes = []
    for s in slices:
        image_type = _image_type(s.ds)
        if "LOCALIZER" in image_type:
            fail("localizer", f"ImageType {'/'.join(image_type)} marks a localizer (scout)", s.path)
    first_class = ""
    for s in slices:
        modality = _text(s.ds, "Modality")
        sop_class = _text(s.ds, "SOPClassUID")
        if not sop_class:
            # Some exports blank the dataset's SOP class but keep it in the file meta.
            sop_class = _text(s.ds.file_meta, "MediaStorageSOPClassUID")
            if sop_class and not notes:
                notes.append("SOPClassUID is blank; taken from MediaStorageSOPClassUID")
        if modality != "CT":
            fail("not-ct", f"Modality is {modality or 'blank'!r}, not 'CT'", s.path)
        if sop_class != CT_IMAGE_STORAGE and sop_class not in ENHANCED_CT_STORAGES:
            from pydicom.uid import UID

            name = UID(sop_class).name if sop_class else "blank"
            fail("not-ct", f"SOP class is {name} ({sop_class}), not CT Image Storage", s.path)
        frames = _int(s.ds, "NumberOfFrames", 1)
        if frames is None:
            fail("unreadable", "NumberOfFrames is malformed", s.path)
        if sop_class in ENHANCED_CT_STORAGES or frames > 1:
            fail("multi-frame", "multi-frame (Enhanced) CT is not supported yet", s.path)
        first_class = first_class or sop_class
    return first_class, notes


def _check_uids(slices: list[_Slice], opts: ConvertOptions, fail, key: str) -> list[str]:
    """Reject (or repair) mixed, blank and duplicate UIDs; return warnings."""
    for attr, what in (("SeriesInstanceUID", "mixed-series"), ("StudyInstanceUID", "mixed-series"),
                       ("FrameOfReferenceUID", "mixed-series")):
        values = Counter(s.uids[attr] for s in slices)
        if len(values) > 1:
            common = values.most_common(1)[0][0]
            odd = next(s for s in slices if s.uids[attr] != common)
            fail(what, f"files carry {len(values)} different {attr}s: "
                 f"{odd.uids[attr] or 'blank'!r} here, {common or 'blank'!r} in "
                 f"{values[common]} other file(s)", odd.path)
    bad = {a: [s for s in slices if not is_valid_uid(s.uids[a])] for a in _UID_ATTRS}
    bad = {a: v for a, v in bad.items() if v}
    notes = []
    if bad and not opts.repair_blank_uids:
        what = ", ".join(f"{a} ({len(v)} of {len(slices)} files)" for a, v in bad.items())
        fail("blank-uid", f"blank or invalid UIDs: {what}", next(iter(bad.values()))[0].path,
             REPAIR_HINT)
    if bad:
        from pydicom.uid import generate_uid

        # Derived from file bytes only, so a rerun (or another machine) derives the same UIDs.
        series_entropy = sorted(s.digest for s in slices)
        for attr, offenders in bad.items():
            for s in offenders:
                srcs = [s.digest] if attr == "SOPInstanceUID" else series_entropy
                s.uids[attr] = generate_uid(entropy_srcs=[f"spine-idc:{attr}", *srcs])
        note = ("UIDs repaired (convert.repair_blank_uids): "
                + ", ".join(f"{a} in {len(v)} file(s)" for a, v in bad.items())
                + " were blank or invalid and were derived from file content")
        logger.warning("series %s: %s", key, note)
        notes.append(note)
    seen: dict[str, str] = {}
    for s in slices:
        uid = s.uids["SOPInstanceUID"]
        if uid in seen:
            fail("duplicate-uid", f"SOPInstanceUID {uid} is also that of {seen[uid]}", s.path)
        seen[uid] = s.path
    return notes


def _geometry(slices: list[_Slice], fail) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Check geometry is present and shared; return IOP (6,), PixelSpacing (2,), (rows, cols)."""
    for s in slices:
        iop = _floats(s.ds, "ImageOrientationPatient", 6)
        ps = _floats(s.ds, "PixelSpacing", 2)
        ipp = _floats(s.ds, "ImagePositionPatient", 3)
        for name, v in (("ImagePositionPatient", ipp), ("ImageOrientationPatient", iop),
                        ("PixelSpacing", ps)):
            if v is None:
                fail("missing-geometry", f"{name} is missing or malformed", s.path)
        if (abs(np.linalg.norm(iop[:3]) - 1) > 1e-3 or abs(np.linalg.norm(iop[3:]) - 1) > 1e-3
                or abs(iop[:3] @ iop[3:]) > 1e-3 or np.any(ps <= 0)):
            fail("missing-geometry", f"ImageOrientationPatient {iop.tolist()} is not two unit "
                 f"orthogonal vectors or PixelSpacing {ps.tolist()} is not positive", s.path)
        s.iop, s.ps, s.ipp = iop, ps, ipp
        rows, cols = _int(s.ds, "Rows", 0), _int(s.ds, "Columns", 0)
        if not rows or not cols:
            fail("missing-geometry", "Rows or Columns is missing or malformed", s.path)
        s.shape = (rows, cols)

    def signature(s):
        return s.shape, tuple(np.round(s.ps, 3)), tuple(np.round(s.iop, 3))

    # The most common geometry is the reference, so the odd file out is the one named.
    ref_sig = Counter(signature(s) for s in slices).most_common(1)[0][0]
    ref = next(s for s in slices if signature(s) == ref_sig)
    ref_iop = ref.iop
    off_axis = [s for s in slices if np.max(np.abs(s.iop - ref_iop)) > 1e-3]
    if off_axis and len(off_axis) <= 2 and len(slices) - len(off_axis) >= 2 * len(off_axis):
        ref_n = np.cross(ref_iop[:3], ref_iop[3:])
        n = np.cross(off_axis[0].iop[:3], off_axis[0].iop[3:])
        angle = np.degrees(np.arccos(min(1.0, abs(float(n @ ref_n)))))
        if angle > _SCOUT_MIN_ANGLE_DEG:
            fail("localizer", f"a single slice at {angle:.0f} deg to the others' plane "
                 f"(ImageOrientationPatient {off_axis[0].iop.tolist()}): a scout projection",
                 off_axis[0].path)
    for s in slices:
        for name, a, b in (("Rows/Columns", s.shape, ref.shape), ("PixelSpacing", s.ps, ref.ps),
                           ("ImageOrientationPatient", s.iop, ref.iop)):
            if not np.allclose(a, b, rtol=0, atol=_GEOM_ATOL):
                fail("mixed-geometry", f"{name} {np.asarray(a).tolist()} differs from "
                     f"{np.asarray(b).tolist()} of {ref.path}", s.path)
    if ref.shape[0] <= 0 or ref.shape[1] <= 0:
        fail("missing-geometry", f"Rows/Columns {ref.shape} are missing", ref.path)
    return ref.iop, ref.ps, ref.shape


def _positions(slices, iop, ps, opts: ConvertOptions, fail):
    """Sort slices along the normal and check their spacing; return the slice step vector."""
    n = np.cross(iop[:3], iop[3:])
    slices.sort(key=lambda s: (float(s.ipp @ n), s.path))
    d = np.array([float(s.ipp @ n) for s in slices])
    if len(slices) == 1:
        # No neighbour to measure: fall back to the header's own idea of the spacing.
        ds = slices[0].ds
        spacing = abs(_number(ds, "SpacingBetweenSlices") or _number(ds, "SliceThickness") or 1.0)
        return n * spacing, [f"single slice: slice spacing {spacing} mm taken from the header"]
    steps = np.diff(d)
    for k in np.flatnonzero(steps < 0.01):
        fail("duplicate-position", f"two slices at the same position {d[k]:.3f} mm along the "
             f"normal: this file and {slices[k].path}", slices[k + 1].path)
    offsets = np.array([s.ipp - slices[0].ipp for s in slices])
    perp = np.linalg.norm(offsets - np.outer(offsets @ n, n), axis=1)
    notes = []
    if perp.max() > max(0.01, 0.1 * ps.min()):
        k = int(np.argmax(perp))
        tilt = np.degrees(np.arctan2(perp[k], abs(d[k] - d[0])))
        msg = (f"slice positions drift {perp[k]:.2f} mm off the slice normal over "
               f"{abs(d[k] - d[0]):.1f} mm (gantry tilt about {tilt:.1f} deg, header "
               f"GantryDetectorTilt {slices[k].ds.get('GantryDetectorTilt', 'absent')})")
        if not opts.allow_gantry_tilt:
            fail("gantry-tilt", msg, slices[k].path,
                 "convert.allow_gantry_tilt: true accepts it with a sheared affine")
        notes.append(msg + "; accepted with a sheared affine")
    median = float(np.median(steps))
    for k, step in enumerate(steps):
        where = (f"between positions {d[k]:.2f} and {d[k + 1]:.2f} mm along the normal "
                 f"(after {slices[k].path})")
        if step > opts.max_gap_ratio * median:
            missing = max(1, round(step / median) - 1)
            fail("missing-slices", f"gap of {step:.2f} mm {where}, median spacing {median:.2f} "
                 f"mm: about {missing} slice(s) missing", slices[k + 1].path)
        if abs(step - median) > opts.spacing_rtol * median:
            fail("irregular-spacing", f"step of {step:.2f} mm {where} differs from the median "
                 f"spacing {median:.2f} mm by more than {opts.spacing_rtol:.0%}",
                 slices[k + 1].path)
    if opts.allow_gantry_tilt and notes:
        return (slices[-1].ipp - slices[0].ipp) / (len(slices) - 1), notes
    return n * (d[-1] - d[0]) / (len(slices) - 1), notes


def _decoder_problem(ts) -> str | None:
    """Why pixel data in transfer syntax ``ts`` cannot be decoded here, or ``None``."""
    from pydicom.pixels.decoders.base import get_decoder

    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        return f"pydicom has no decoder at all for transfer syntax {ts.name} ({ts})"
    if decoder.is_available:
        return None
    packages = "; ".join(decoder.missing_dependencies) or "a pydicom pixel-data plugin"
    return (f"no decoder for transfer syntax {ts.name} ({ts}) is installed; one of these "
            f"adds it: {packages}")


def _rescale(s: _Slice, fail) -> tuple[float, float]:
    """RescaleSlope/Intercept of one slice; absent means identity, malformed is an error."""
    out = []
    for keyword, default in (("RescaleSlope", 1.0), ("RescaleIntercept", 0.0)):
        if keyword not in s.ds:
            logger.warning("%s: no %s, using %g", s.path, keyword, default)
            out.append(default)
            continue
        value = _number(s.ds, keyword)
        if value is None or (keyword == "RescaleSlope" and value == 0):
            fail("bad-rescale", f"{keyword} is {_text(s.ds, keyword)!r}: HU cannot be computed",
                 s.path)
        out.append(value)
    return out[0], out[1]


#: CT numbers a real CT can hold: extended-scale scanners store up to about 30,700 HU within
#: 16-bit signed values; below, air is -1000 and padding outside the field of view at most
#: 16-bit signed's minimum less a usual intercept of -1024.  Values beyond are a misread
#: (signed pixels labelled unsigned reach 64,500) or a broken rescale, not tissue.
MAX_HU = 32767.0
MIN_HU = -32768.0 - 1024.0


def _decode(slices: list[_Slice], shape: tuple[int, int], fail) -> np.ndarray:
    """Decode and rescale to HU: int16 when exact, float32 otherwise."""
    checked = {}
    rescale = [_rescale(s, fail) for s in slices]
    integral = all(a.is_integer() and b.is_integer() for a, b in rescale)
    out = np.empty((shape[1], shape[0], len(slices)), dtype=np.int16 if integral else np.float32)
    for k, (s, (slope, intercept)) in enumerate(zip(slices, rescale)):
        ts = s.ds.file_meta.get("TransferSyntaxUID")
        if ts is None:
            fail("unreadable", "the file meta has no TransferSyntaxUID", s.path)
        if ts not in checked:
            checked[ts] = _decoder_problem(ts)
        if checked[ts]:
            fail("unreadable", checked[ts], s.path)
        pixel_repr = s.ds.get("PixelRepresentation", "?")
        try:
            pixels = s.ds.pixel_array
        except Exception as exc:
            fail("unreadable", f"cannot decode pixel data ({ts.name}, {ts}): {exc}", s.path)
        if pixels.shape != shape:
            fail("unreadable", f"decoded pixels have shape {pixels.shape}, header says {shape}",
                 s.path)
        hu = pixels.astype(np.float64) * slope + intercept
        if not np.isfinite(hu).all():
            fail("bad-rescale", f"RescaleSlope {slope:g} and RescaleIntercept {intercept:g} give "
                 "CT numbers that are not finite", s.path)
        lo, hi = float(hu.min()), float(hu.max())
        if lo < MIN_HU or hi > MAX_HU:
            fail("implausible-hu",
                 f"CT numbers {lo:.6g} to {hi:.6g} HU (RescaleSlope {slope:g}, RescaleIntercept "
                 f"{intercept:g}, PixelRepresentation {pixel_repr}) are outside what a CT can "
                 f"hold ({MIN_HU:g} to {MAX_HU:g})", s.path,
                 hint="signed pixel data labelled unsigned, or a broken rescale")
        if out.dtype == np.int16 and (hu.min() < -32768 or hu.max() > 32767):
            logger.debug("HU outside int16 in %s: storing float32", s.path)
            out = out.astype(np.float32)
        out[:, :, k] = hu.T  # pixel rows are j, columns are i
        s.ds = None  # free the encoded bytes as we go: long series are big
    return out


def load_series(
    files: Sequence[Path | str], series_key: str, options: ConvertOptions | None = None
) -> tuple[Volume, SeriesInfo]:
    """Read one DICOM CT series into a volume in Hounsfield units.

    Parameters
    ----------
    files:
        The series' DICOM files, in any order.
    series_key:
        The key errors and the :class:`SeriesInfo` are labelled with (normally the
        SeriesInstanceUID, or the ``nouid-`` key of :func:`spine_idc.sources.scan.scan_folder`).
    options:
        Checks and repairs; defaults to :class:`ConvertOptions()`.

    Returns
    -------
    volume:
        ``array[i, j, k]`` (column, row, slice ascending along the slice normal), int16 HU when
        the rescale is exact in int16, else float32; ``affine`` maps voxels to RAS mm.
    info:
        The series' UIDs (repaired ones where ``uids_repaired``), ``files`` and
        ``sop_instance_uids`` in slice order, geometry and warnings.

    Raises
    ------
    InvalidSeriesError
        With ``reason`` one of the codes listed in this module's docstring.
    """
    opts = options or ConvertOptions()
    fail = _failer(series_key)
    if not files:
        fail("too-few-slices", "no files")
    slices = [_read(str(p), series_key) for p in sorted(str(f) for f in files)]
    sop_class, notes = _check_kind(slices, fail)
    notes += _check_uids(slices, opts, fail, series_key)
    iop, ps, shape = _geometry(slices, fail)
    if len(slices) < opts.min_slices:
        fail("too-few-slices", f"{len(slices)} slice(s), fewer than min_slices={opts.min_slices}",
             slices[0].path, "lower `convert.min_slices` to accept short series")
    step, more = _positions(slices, iop, ps, opts, fail)
    notes += more
    first = slices[0].ds
    info = SeriesInfo(
        series_key=series_key,
        series_instance_uid=slices[0].uids["SeriesInstanceUID"],
        study_instance_uid=slices[0].uids["StudyInstanceUID"],
        frame_of_reference_uid=slices[0].uids["FrameOfReferenceUID"],
        sop_class_uid=sop_class,
        sop_instance_uids=[s.uids["SOPInstanceUID"] for s in slices],
        files=[s.path for s in slices],
        patient_id=_text(first, "PatientID"),
        modality="CT",
        rows=shape[0],
        columns=shape[1],
        slice_spacing_mm=float(np.linalg.norm(step)),
        pixel_spacing_mm=(float(ps[0]), float(ps[1])),
        slice_thickness_mm=_number(first, "SliceThickness"),
        transfer_syntax_uid=str(first.file_meta.get("TransferSyntaxUID", "")),
        uids_repaired=any(n.startswith("UIDs repaired") for n in notes),
        warnings=notes,
    )
    lps = np.eye(4)
    lps[:3, 0] = iop[:3] * ps[1]  # i runs along a row: columns are PixelSpacing[1] apart
    lps[:3, 1] = iop[3:] * ps[0]  # j runs down a column: rows are PixelSpacing[0] apart
    lps[:3, 2] = step
    lps[:3, 3] = slices[0].ipp
    array = _decode(slices, shape, fail)
    return Volume(array, LPS_TO_RAS @ lps), info


def write_converted(volume: Volume, info: SeriesInfo, out_dir: str | Path) -> None:
    """Write ``volume.nii.gz`` then ``series.json`` into ``out_dir``, each atomically.

    ``series.json`` goes last so that its presence means the volume is complete.
    """
    out = Path(out_dir)
    write_nifti(volume, out / "volume.nii.gz")
    info.write(out / "series.json")
