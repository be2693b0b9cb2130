"""Per-series failure records.

A stage that meets bad input writes ``failure.json`` into its output folder *instead of* its
products, and exits normally: the failure is a result, recorded for ``failures.csv``, and the
batch goes on.  Downstream stages are only requested for series whose upstream stage succeeded.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from .atomic import write_text
from .errors import SeriesError
from .layout import FAILURE


@dataclasses.dataclass(frozen=True)
class Failure:
    series_key: str
    stage: str
    reason: str
    message: str
    hint: str = ""
    path: str = ""

    @classmethod
    def from_error(cls, stage: str, err: SeriesError) -> "Failure":
        return cls(
            series_key=err.series,
            stage=stage,
            reason=err.reason,
            message=err.detail,
            hint=err.hint or "",
            path=err.path or "",
        )


def write_failure(folder: Path, failure: Failure) -> Path:
    target = Path(folder) / FAILURE
    write_text(target, json.dumps(dataclasses.asdict(failure), indent=2))
    return target


def read_failure(folder: Path) -> Failure | None:
    """The failure recorded in a stage folder, or ``None`` if the stage succeeded."""
    target = Path(folder) / FAILURE
    if not target.exists():
        return None
    return Failure(**json.loads(target.read_text()))
