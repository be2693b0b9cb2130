"""What a source of series must provide (:class:`Source`), and the record every source returns.

A source answers four questions, and nothing else in the package asks which source it is:

* is it remote (its series are fetched into ``work/download`` before conversion), and which
  folder, if any, does its manifest scan (an input of the workflow's ``manifest`` checkpoint);
* can it be reached (:meth:`Source.probe`: seconds, before minutes of retries are spent, given
  the run's :class:`~spine_idc.config.Remote` settings);
* which series does the run's configuration select (:meth:`Source.list_series`: manifest rows);
* how does one series get into a folder (:meth:`Source.fetch`).

Verification, retries and the atomic rename around :meth:`Source.fetch` are the same for every
source, so they live once in :mod:`.fetch`.  Modules here import nothing heavy at the top: the
workflow reads the registry while it plans.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ..config import Remote

if TYPE_CHECKING:
    from ..manifest import ManifestRow


@dataclasses.dataclass(frozen=True)
class DownloadStats:
    """What one successful copy brought: regular files in the folder, their bytes, wall time."""

    files: int
    bytes: int
    seconds: float

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else float("inf")


@runtime_checkable
class Source(Protocol):
    """One place series come from.  An instance is registered in :data:`spine_idc.sources.SOURCES`
    under :attr:`name`, the value of the config's ``source`` and of the manifest's column."""

    #: The config's ``source`` value.
    name: str
    #: Whether series are fetched (:meth:`fetch`) before conversion; local ones are read in place.
    remote: bool

    def input_folder(self, config: dict) -> str | None:
        """The folder the manifest scans, as the workflow names it (from the validated config
        dict); ``None`` when the series are not in a folder here."""

    def probe(self, remote: Remote) -> None:
        """Raise :class:`~spine_idc.errors.NetworkUnreachable` within seconds if the source is
        down; do nothing for a source that needs no network."""

    def list_series(self, cfg, file_lists: Path, input_dir: Path | None) -> list[ManifestRow]:
        """The series the run's configuration (a :class:`spine_idc.config.Config`) selects, as
        manifest rows (not yet written).

        ``file_lists`` receives one file list per series of a local source; ``input_dir``
        overrides ``cfg.input_dir`` for the sources that scan a folder.
        """

    def fetch(self, row: ManifestRow, dest: Path, remote: Remote,
              timeout_s: float) -> DownloadStats:
        """Copy one series into the empty folder ``dest`` within ``timeout_s`` seconds.

        Raises :class:`~spine_idc.errors.TransientError` for a fault worth retrying and
        :class:`~spine_idc.errors.SeriesError` for one that is the series' own; the caller
        (:func:`spine_idc.sources.fetch.download_series`) verifies what arrived.
        """
