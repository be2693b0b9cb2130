"""Find the DICOM series under a folder, whatever its layout, reading file headers only.

Files are grouped by SeriesInstanceUID.  Files whose SeriesInstanceUID is blank or not a valid
UID cannot be keyed by it, so they are grouped per folder (and, within a folder, per
SeriesInstanceUID text, StudyInstanceUID, FrameOfReferenceUID and matrix size) under a
deterministic key ``nouid-<12 hex>``.  Keys become folder names downstream, so every key passes
:func:`spine_idc.uids.safe_series_key`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import stat
from collections import defaultdict
from pathlib import Path

from ..uids import is_valid_uid, safe_series_key

logger = logging.getLogger(__name__)

_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"

# Only these are parsed; the rest of each header is skipped, which is what makes scanning fast.
_TAGS = [
    "SOPClassUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "FrameOfReferenceUID",
    "PatientID",
    "Modality",
    "SeriesDescription",
    "Rows",
    "Columns",
]


@dataclasses.dataclass(frozen=True)
class FoundSeries:
    """One series found by :func:`scan_folder`.

    Attributes
    ----------
    key:
        The SeriesInstanceUID, or ``nouid-<hex>`` when the files carry none that is valid.
    series_instance_uid:
        The SeriesInstanceUID as found (``""`` when blank; the invalid text when invalid).
    study_instance_uid, patient_id, modality, sop_class_uid, series_description:
        Taken from the first file (in sorted order); ``sop_class_uid`` falls back to the file
        meta's MediaStorageSOPClassUID when the dataset's is blank.
    n_files:
        Number of files.
    files:
        Absolute paths (``root`` made absolute and ``..``-free, symbolic links not resolved),
        sorted.
    """

    key: str
    series_instance_uid: str
    study_instance_uid: str
    patient_id: str
    modality: str
    sop_class_uid: str
    series_description: str
    n_files: int
    files: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class _Header:
    path: str
    folder: str  # relative to the scan root, POSIX, "." for the root itself
    series_uid: str
    study_uid: str
    for_uid: str
    patient_id: str
    modality: str
    sop_class_uid: str
    description: str
    rows: int
    columns: int


def _text(ds, keyword: str) -> str:
    # pydicom converts values lazily, so a malformed element raises here, not in dcmread.
    # The file still belongs to its series: the converter reports it with a reason.
    try:
        value = ds.get(keyword, "")
        return "" if value is None else str(value).strip()
    except Exception as exc:
        logger.debug("malformed %s: %s", keyword, exc)
        return ""


def _int(ds, keyword: str) -> int:
    try:
        return int(ds.get(keyword) or 0)
    except Exception as exc:
        logger.debug("malformed %s: %s", keyword, exc)
        return 0


def _read_header(path: str, folder: str) -> _Header | None:
    """Parse the few tags the scan needs, or return ``None`` for a file that is not DICOM."""
    import pydicom

    try:
        with open(path, "rb") as fh:
            # Part 10 files carry 128 bytes of preamble then "DICM"; checking it ourselves
            # rejects text files, images, etc. without handing them to the parser.
            head = fh.read(132)
            if len(head) < 132 or head[128:] != b"DICM":
                logger.debug("skipping %s: no DICM preamble", path)
                return None
            fh.seek(0)
            ds = pydicom.dcmread(fh, stop_before_pixels=True, specific_tags=_TAGS)
    except Exception as exc:  # any parse failure means "not a usable DICOM file" here
        logger.debug("skipping %s: cannot parse header (%s)", path, exc)
        return None
    sop_class = _text(ds, "SOPClassUID") or _text(ds.file_meta, "MediaStorageSOPClassUID")
    # Junk after a DICM preamble still "parses" (to an empty dataset): a SOP class is the
    # least a real DICOM object carries.  A DICOMDIR is an index, not part of a series.
    if not sop_class or sop_class == _DICOMDIR_SOP_CLASS:
        logger.debug("skipping %s: no SOP class or a DICOMDIR (%r)", path, sop_class)
        return None
    return _Header(
        path=path,
        folder=folder,
        series_uid=_text(ds, "SeriesInstanceUID"),
        study_uid=_text(ds, "StudyInstanceUID"),
        for_uid=_text(ds, "FrameOfReferenceUID"),
        patient_id=_text(ds, "PatientID"),
        modality=_text(ds, "Modality"),
        sop_class_uid=sop_class,
        description=_text(ds, "SeriesDescription"),
        rows=_int(ds, "Rows"),
        columns=_int(ds, "Columns"),
    )


def _walk(root: Path):
    """Yield ``(absolute path, folder relative to root)`` for every file, in sorted order."""
    def unreadable(err: OSError) -> None:  # os.walk would otherwise drop a folder silently
        logger.warning("cannot list %s: %s", err.filename, err.strerror)

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):
        dirnames.sort()  # walk order must not depend on the file system
        for name in dirnames:
            link = os.path.join(dirpath, name)
            if os.path.islink(link):  # listed by os.walk, never entered: say so
                logger.warning(
                    "not following %s: a symbolic link to a folder (links to folders are not "
                    "followed, so that a link cannot loop or reach outside the input); give "
                    "the folder it points to as input_dir, or copy it in", link)
        rel = Path(dirpath).relative_to(root).as_posix()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            # Only regular files (or links to them) are opened: reading a FIFO blocks until
            # someone writes to it, and a socket or a device is not a file of a series.
            try:
                mode = os.stat(path).st_mode
            except OSError as exc:
                logger.warning("skipping %s: %s", path, exc.strerror)
                continue
            if not stat.S_ISREG(mode):
                logger.warning("skipping %s: not a regular file (a FIFO, socket or device)", path)
                continue
            yield path, rel


def _nouid_key(h: _Header) -> str:
    # The folder alone is not enough: one folder may hold several UID-less series, told apart
    # by whatever else they carry.  Unit separators keep the fields from running together.
    text = "\x1f".join(
        [h.folder, h.series_uid, h.study_uid, h.for_uid, f"{h.rows}x{h.columns}"]
    )
    return "nouid-" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def _read_headers(paths: list[tuple[str, str]], workers: int) -> list[_Header | None]:
    if workers <= 1:
        return [_read_header(*p) for p in paths]
    from concurrent.futures import ProcessPoolExecutor

    # Header parsing is pure-Python CPU work that threads cannot share (the GIL): processes can.
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(_read_header, *zip(*paths), chunksize=64))


def scan_folder(root: Path, workers: int | None = None) -> list[FoundSeries]:
    """Find every DICOM series under ``root``.

    Parameters
    ----------
    root:
        Folder to search recursively.  Any layout and any file names; non-DICOM files, files
        that fail to parse or carry no SOP class, and DICOMDIR files are skipped (logged at
        debug level).  Symbolic links to folders are not followed.

    Returns
    -------
    list of FoundSeries
        Sorted by key.  The result depends only on the files and their paths relative to
        ``root``, not on file-system order.
    workers:
        Processes that read headers; by default one for fewer than 2000 files (starting
        processes costs more than it saves), else up to 8.

    Raises
    ------
    NotADirectoryError
        If ``root`` is not a folder.

    Notes
    -----
    A file whose SeriesInstanceUID is blank or invalid is grouped with the other such files of
    its folder that share its SeriesInstanceUID text, StudyInstanceUID, FrameOfReferenceUID and
    Rows x Columns; the key is ``nouid-`` plus the first 12 hex digits of the SHA-1 of those
    fields and the folder path relative to ``root``.
    """
    root = Path(os.path.abspath(root))  # absolute and without "..", links kept
    if not root.is_dir():
        raise NotADirectoryError(f"not a folder: {root}")
    paths = list(_walk(root))
    if workers is None:
        workers = 1 if len(paths) < 2000 else min(8, os.cpu_count() or 1)
    groups: dict[str, list[_Header]] = defaultdict(list)
    for header in _read_headers(paths, workers):
        if header is None:
            continue
        key = header.series_uid if is_valid_uid(header.series_uid) else _nouid_key(header)
        groups[key].append(header)

    found = []
    for key in sorted(groups):
        members = sorted(groups[key], key=lambda h: h.path)
        first = members[0]
        found.append(
            FoundSeries(
                key=safe_series_key(key),
                series_instance_uid=first.series_uid,
                study_instance_uid=first.study_uid,
                patient_id=first.patient_id,
                modality=first.modality,
                sop_class_uid=first.sop_class_uid,
                series_description=first.description,
                n_files=len(members),
                files=tuple(h.path for h in members),
            )
        )
    n_dicom = sum(s.n_files for s in found)
    logger.info(
        "scanned %s: %d files, %d DICOM, %d series", root, len(paths), n_dicom, len(found)
    )
    return found
