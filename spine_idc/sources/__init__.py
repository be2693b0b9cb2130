"""Where series come from: a :class:`~.base.Source` per kind of source, and the registry.

====================  ======================================================================
module                job
====================  ======================================================================
:mod:`.base`          the :class:`~.base.Source` protocol; :class:`~.base.Remote` (how to reach
                      a remote source), :class:`~.base.DownloadStats`
:mod:`.local`         ``local``: the DICOM series under ``input_dir``, read in place
:mod:`.phantom`       ``phantom``: generated phantoms (:mod:`spine_idc.phantom`), then scanned
:mod:`.idc`           ``idc``: IDC's index or BigQuery (``query``, ``indices``), s5cmd (``s3``)
:mod:`.dicomweb`      ``dicomweb``: QIDO-RS and WADO-RS (``series``) on ``dicomweb_url``
:mod:`.fetch`         one remote series into a folder that exists only when it is whole
:mod:`.verify`        what arrived against the manifest row
:mod:`.net`           can the endpoint be reached at all (seconds, not minutes of retries)
:mod:`.scan`          the series in a folder, whatever its layout
:mod:`.selection`     the ``query`` filters, in Python, for sources without an index
====================  ======================================================================

A new source is one module that defines an object with the protocol's attributes and methods,
and one line in :data:`SOURCES` (plus its name in the two schemas' ``source`` enums, which
``tests/sources/test_sources.py`` keeps equal to this registry).  Nothing else asks which source it is.
"""

from __future__ import annotations

from ..errors import ConfigError
from . import dicomweb, idc, local, phantom
from .base import DownloadStats, Remote, Source

#: Every source, by the name the config's ``source`` and the manifest's column use.
SOURCES: dict[str, Source] = {
    "local": local.SOURCE,
    "phantom": phantom.SOURCE,
    "idc": idc.SOURCE,
    "dicomweb": dicomweb.SOURCE,
}


def get_source(name: str) -> Source:
    """The registered source called ``name``."""
    try:
        return SOURCES[name]
    except KeyError:
        raise ConfigError(f"unknown source {name!r}",
                          hint=f"use one of {', '.join(SOURCES)}") from None


def is_remote(name: str) -> bool:
    """Whether series of source ``name`` are downloaded before they are converted."""
    return get_source(name).remote


__all__ = ["SOURCES", "DownloadStats", "Remote", "Source", "get_source", "is_remote"]
