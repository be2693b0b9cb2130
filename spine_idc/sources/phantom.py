"""The ``phantom`` source: synthetic spine CTs with known labels, generated, then read in place.

The generator is :mod:`spine_idc.phantom` (a development aid, imported only here and only when
phantoms are written); the workflow's ``phantoms`` rule writes them into the layout's
``phantoms`` folder, which the manifest then scans like a ``local`` folder.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .. import layout
from ..atomic import atomic_dir
from .local import LocalSource


def write_phantoms(seeds: list[int], size: str, out_dir: Path, levels=()) -> None:
    """One phantom series per seed into ``out_dir/seed-NNNN/`` (DICOM + ground truth), atomically.

    ``levels`` (first, last) centres every phantom on that range instead of a drawn scenario.
    """
    from ..phantom import write_phantom

    with atomic_dir(out_dir) as tmp:
        for seed in seeds:
            write_phantom(seed, tmp / f"seed-{seed:04d}", size=size, levels=tuple(levels) or None)


@dataclasses.dataclass(frozen=True)
class PhantomSource(LocalSource):
    """Generated series, scanned from the workflow's phantoms folder."""

    name: str = "phantom"

    def input_folder(self, config: dict) -> str | None:
        return layout.PATTERNS["phantoms"]


SOURCE = PhantomSource()
