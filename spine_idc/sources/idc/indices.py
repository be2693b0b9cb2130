"""Where idc-index's tables live: the bundled series table and the optional, downloaded ones.

idc-index-data ships the series-level table (``idc_index.parquet``) inside its wheel.  Other
tables are assets of the matching idc-index-data GitHub release and are downloaded on demand;
the cohort query needs two of them, and only when a filter asks for what they hold:

* ``ct_index`` (one row per CT Image Storage series: ``SliceThickness``, ``ImageType``, ...) for
  the slice-thickness bounds;
* ``seg_index`` (one row per SEG series: ``segmented_SeriesInstanceUID``, ``AlgorithmName``, ...)
  for ``analysis_results``.

:func:`locate_index` looks for ``<name>.parquet`` in this order:

1. ``indices_dir``, when one is given (an offline copy, or a stand-in in tests);
2. idc-index's own cache, ``platformdirs.user_data_dir("idc_index_data", "IDC",
   version=<idc-index-data version>)``, so a table fetched by ``IDCClient().fetch_index(name)`` is
   reused here and the other way round;
3. a download from ``<base>/<name>.parquet``, where ``<base>`` is the release of the installed
   idc-index-data (or ``$SPINE_IDC_INDEX_URL_BASE``, for a mirror), written atomically into that
   cache.  Failing to connect raises :class:`~spine_idc.errors.NetworkUnreachable`.
"""

from __future__ import annotations

import logging
import os
from importlib.metadata import version as installed_version
from pathlib import Path

import idc_index_data
import platformdirs
import requests

from ...atomic import atomic_path
from ...errors import NetworkUnreachable, SpineIdcError

log = logging.getLogger(__name__)

#: Environment variable that replaces the release URL base (no trailing ``/<name>.parquet``).
URL_BASE_ENV = "SPINE_IDC_INDEX_URL_BASE"
RELEASE_URL_BASE = "https://github.com/ImagingDataCommons/idc-index-data/releases/download/{version}"

#: Columns the cohort query reads from each table; a file without them is rejected up front.
REQUIRED_COLUMNS = {
    "idc_index": ("SeriesInstanceUID", "collection_id", "Modality", "instanceCount"),
    "ct_index": ("SeriesInstanceUID", "SliceThickness"),
    "seg_index": ("SeriesInstanceUID", "segmented_SeriesInstanceUID"),
}


def data_version() -> str:
    """The installed idc-index-data version (e.g. ``"25.0.5"``); it names the release and cache."""
    return installed_version("idc-index-data")


def idc_release() -> str:
    """The IDC data release the bundled index describes (e.g. ``"v25"``)."""
    return f"v{int(data_version().split('.')[0])}"


def bundled_index_path() -> Path:
    """The series-level table shipped with idc-index-data (one row per DICOM series in IDC)."""
    return Path(idc_index_data.IDC_INDEX_PARQUET_FILEPATH)


def cache_dir() -> Path:
    """idc-index's versioned folder for downloaded tables (honours ``$XDG_DATA_HOME`` on Linux)."""
    return Path(platformdirs.user_data_dir("idc_index_data", "IDC", version=data_version()))


def release_url(name: str, url_base: str | None = None) -> str:
    """Download URL of table ``name``: ``url_base``, else ``$SPINE_IDC_INDEX_URL_BASE``, else GitHub."""
    base = url_base or os.environ.get(URL_BASE_ENV) or RELEASE_URL_BASE.format(version=data_version())
    return f"{base.rstrip('/')}/{name}.parquet"


def check_index_file(path: Path, name: str) -> Path:
    """Check that ``path`` is a parquet file holding the columns the query reads from ``name``.

    Raises
    ------
    SpineIdcError
        The file is not parquet (a truncated download, an HTML error page) or lacks a column.
    """
    import pyarrow.parquet as pq

    try:
        columns = set(pq.read_schema(path).names)
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ... for a file that is not parquet
        raise SpineIdcError(
            f"{name}: {path} is not a readable parquet file ({e})",
            hint="delete it; it is downloaded again on the next run",
        ) from e
    missing = [c for c in REQUIRED_COLUMNS.get(name, ("SeriesInstanceUID",)) if c not in columns]
    if missing:
        raise SpineIdcError(
            f"{name}: {path} lacks column(s) {', '.join(missing)}",
            hint=f"replace it with {name}.parquet from the idc-index-data {data_version()} release",
        )
    return path


def locate_index(
    name: str,
    indices_dir: str | os.PathLike | None = None,
    *,
    url_base: str | None = None,
    timeout: float = 30.0,
) -> Path:
    """Path of idc-index table ``name`` (for example ``"ct_index"``), downloading it if needed.

    Parameters
    ----------
    name:
        A table listed in ``idc_index_data.INDEX_METADATA``.
    indices_dir:
        A folder searched first for ``<name>.parquet``; nothing is written there.
    url_base:
        Replaces the release URL base for the download (default: ``$SPINE_IDC_INDEX_URL_BASE``,
        else the idc-index-data GitHub release of the installed version).
    timeout:
        Seconds to wait for the server to connect or send data.

    Raises
    ------
    NetworkUnreachable
        The table is nowhere local and the server cannot be reached.
    SpineIdcError
        The server answered with an error, or a file found or fetched is not the expected table.
    """
    if name not in idc_index_data.INDEX_METADATA:
        raise ValueError(f"unknown idc-index table {name!r}")
    if name == "idc_index":
        return check_index_file(bundled_index_path(), name)
    for folder in (Path(indices_dir) if indices_dir else None, cache_dir()):
        if folder is not None and (folder / f"{name}.parquet").is_file():
            return check_index_file(folder / f"{name}.parquet", name)
    return _download(name, release_url(name, url_base), cache_dir() / f"{name}.parquet", timeout)


def _download(name: str, url: str, target: Path, timeout: float) -> Path:
    what_to_do = (
        f"connect to the internet, or fetch it once with idc-index "
        f"(IDCClient().fetch_index('{name}')), or put {name}.parquet in the query's indices_dir"
    )
    log.info("downloading idc-index table %s from %s", name, url)
    try:
        with requests.get(url, stream=True, timeout=timeout) as response:
            if response.status_code != 200:
                raise SpineIdcError(
                    f"cannot download idc-index table {name}: HTTP {response.status_code} from {url}",
                    hint=what_to_do,
                )
            with atomic_path(target, suffix=".parquet") as tmp:
                with open(tmp, "wb") as out:
                    for chunk in response.iter_content(chunk_size=1 << 20):
                        out.write(chunk)
                check_index_file(tmp, name)
    except requests.RequestException as e:
        raise NetworkUnreachable(
            f"idc-index table {name} is not cached in {target.parent} and {url} cannot be reached "
            f"({type(e).__name__})",
            hint=what_to_do,
        ) from e
    log.info("saved %s to %s", name, target)
    return target
