"""The per-series records that cross files between the stages and the cohort.

Each is written by one step and read by another: the measurements (``work/measure``: written
by ``finish``, read by the SR writer and the cohort), the finish record (``work/finish``: read
by the cohort and by :func:`.stages.series_failure`) and the publish record
(``work/publish``: read by the cohort).  ``to_dict`` writes the JSON these files have always
held, and ``from_dict`` reads it back, so work folders written before these classes still read.
The segmenter's own record (``qc.json``) is :class:`spine_idc.segment.base.QCRecord`; here it
travels as the dict it was written as, since every backend writes it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from ..atomic import write_text
from ..measure import VertebraMeasurement
from ..outcome import Failure


class _Record:
    """``write``/``read`` for a record with ``to_dict``/``from_dict``."""

    def to_dict(self) -> dict[str, Any]:  # pragma: no cover - every record defines it
        raise NotImplementedError

    def write(self, path: str | Path) -> None:
        write_text(path, json.dumps(self.to_dict(), indent=2))

    @classmethod
    def read(cls, path: str | Path):
        return cls.from_dict(json.loads(Path(path).read_text()))  # type: ignore[attr-defined]


def _failure(data: dict[str, Any]) -> Failure | None:
    """The ``failure`` a record holds, if any."""
    failure = data.get("failure")
    return Failure(**failure) if failure else None


def _tuples(m: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in m.items()}


@dataclasses.dataclass(frozen=True)
class Measured(_Record):
    """A series' measurements, the options they were made with and the segmenter's QC."""

    series_key: str
    series_instance_uid: str
    study_instance_uid: str
    patient_id: str
    measurements: tuple[VertebraMeasurement, ...]
    measure_options: dict[str, Any]
    qc: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "series_key": self.series_key,
            "series_instance_uid": self.series_instance_uid,
            "study_instance_uid": self.study_instance_uid,
            "patient_id": self.patient_id,
            "measurements": [dataclasses.asdict(m) for m in self.measurements],
            "measure_options": dict(self.measure_options),
            "qc": self.qc,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Measured":
        return cls(
            series_key=data.get("series_key", ""),
            series_instance_uid=data.get("series_instance_uid", ""),
            study_instance_uid=data.get("study_instance_uid", ""),
            patient_id=data.get("patient_id", ""),
            measurements=tuple(VertebraMeasurement(**_tuples(m)) for m in data["measurements"]),
            measure_options=dict(data.get("measure_options") or {}),
            qc=dict(data.get("qc") or {}),
        )


@dataclasses.dataclass(frozen=True)
class Finished(_Record):
    """How a series' finish (measure, SEG, SR) ended: ``failure`` is ``None`` when it did."""

    series_key: str
    failure: Failure | None = None

    @property
    def status(self) -> str:
        return "ok" if self.failure is None else "failed"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"series_key": self.series_key, "status": self.status}
        if self.failure is not None:
            out["failure"] = dataclasses.asdict(self.failure)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Finished":
        return cls(data["series_key"], _failure(data))


@dataclasses.dataclass(frozen=True)
class Published(_Record):
    """What a store said of a series' SEG and SR (``instances``: each one's UID and status),
    or why publishing failed."""

    series_key: str
    store: str
    attempt: int = 1
    viewer_url: str = ""
    seconds: float | None = None  # set when the store answered for every instance
    instances: tuple[dict[str, Any], ...] = ()
    failure: Failure | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"series_key": self.series_key, "store": self.store,
                               "attempt": self.attempt}
        if self.seconds is not None:
            out.update(viewer_url=self.viewer_url, seconds=self.seconds,
                       instances=[dict(i) for i in self.instances])
        if self.failure is not None:
            out["failure"] = dataclasses.asdict(self.failure)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Published":
        return cls(
            series_key=data["series_key"], store=data.get("store", ""),
            attempt=int(data.get("attempt", 1)), viewer_url=data.get("viewer_url", ""),
            seconds=data.get("seconds"), instances=tuple(data.get("instances", ())),
            failure=_failure(data),
        )
