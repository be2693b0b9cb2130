"""Check that a downloaded series is whole before anything converts it.

A download tool that exits cleanly has not proved much: a bucket prefix may hold fewer
instances than the index says, an object may be cut short, or a file of another series may sit
under the same prefix.  :func:`verify_series` reads every file that arrived and compares the set
with the manifest row; the first problem becomes a :class:`~spine_idc.errors.SeriesError` with a
stable reason code:

``corrupt-instance``
    A file is not DICOM, lacks its UIDs or pixel data, or its pixel data is shorter than its
    header says (what a cut-short object looks like: pydicom reads it without complaint).
``wrong-series``
    A file belongs to another SeriesInstanceUID.
``duplicate-instance``
    Two files carry the same SOPInstanceUID.
``incomplete-download`` / ``unexpected-instances``
    Fewer / more instances than the manifest's ``n_instances``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..errors import SeriesError


@dataclasses.dataclass(frozen=True)
class VerifiedSeries:
    files: list[Path]
    n_bytes: int


def _pixel_data_complete(ds) -> str | None:
    """Why the pixel data of ``ds`` is incomplete, or ``None`` when it is whole."""
    data = ds.PixelData
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        from pydicom.encaps import generate_fragments

        try:
            n = sum(1 for _ in generate_fragments(data))
        except (ValueError, EOFError) as e:
            return f"its encapsulated pixel data is damaged ({e})"
        if n < frames:
            return f"its encapsulated pixel data holds {n} fragments for {frames} frames"
        return None
    try:
        expected = (int(ds.Rows) * int(ds.Columns) * int(getattr(ds, "SamplesPerPixel", 1))
                    * int(ds.BitsAllocated) * frames + 7) // 8
    except (AttributeError, TypeError, ValueError):
        return None  # malformed image attributes are the converter's to report
    if len(data) < expected:
        return f"its pixel data has {len(data)} of {expected} bytes"
    return None


def verify_series(folder: Path, *, series_key: str, series_instance_uid: str,
                  n_instances: int) -> VerifiedSeries:
    """Read every file in ``folder`` and check it against the manifest row's expectations."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    files = sorted(p for p in Path(folder).iterdir() if p.is_file())
    seen: dict[str, Path] = {}
    n_bytes = 0
    for path in files:
        n_bytes += path.stat().st_size
        try:
            ds = pydicom.dcmread(path)
        except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as e:
            raise SeriesError(series_key, "corrupt-instance",
                              f"a downloaded file is not readable DICOM ({e})", path=str(path),
                              hint="the object is damaged at the source or was cut short") from e
        missing = [k for k in ("SOPInstanceUID", "SeriesInstanceUID", "PixelData") if k not in ds]
        if missing:
            raise SeriesError(series_key, "corrupt-instance",
                              f"a downloaded file has no {', '.join(missing)} (cut short?)",
                              path=str(path), hint="the object is damaged at the source or was cut short")
        uid = str(ds.SeriesInstanceUID)
        if uid != series_instance_uid:
            raise SeriesError(series_key, "wrong-series",
                              f"a downloaded file belongs to series {uid or '(blank)'}, "
                              f"not {series_instance_uid}", path=str(path),
                              hint="the source holds a stray instance under this series")
        why = _pixel_data_complete(ds)
        if why:
            raise SeriesError(series_key, "corrupt-instance", f"a downloaded file is cut short: {why}",
                              path=str(path), hint="the object is damaged at the source or was cut short")
        sop = str(getattr(ds, "SOPInstanceUID", ""))
        if sop in seen:
            raise SeriesError(series_key, "duplicate-instance",
                              f"SOPInstanceUID {sop} arrived twice (also {seen[sop].name})",
                              path=str(path))
        seen[sop] = path
    if len(files) < n_instances:
        raise SeriesError(series_key, "incomplete-download",
                          f"{len(files)} of the {n_instances} instances in the manifest arrived",
                          hint="instances are missing at the source, or the index is out of date")
    if len(files) > n_instances:
        raise SeriesError(series_key, "unexpected-instances",
                          f"{len(files)} instances arrived where the manifest lists {n_instances}",
                          hint="the source holds more instances than the index says")
    return VerifiedSeries(files=files, n_bytes=n_bytes)
