"""Who made a SEG or SR, and how its identity is fixed: the algorithm, the UIDs derived from
the source series and the algorithm, the dates taken from the source, and the atomic write.

Shared by :mod:`.seg` and :mod:`.sr`: an unchanged input gives byte-identical outputs, with
the same SOP Instance UIDs, however often it is run (publishing tells a real change from none).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

from pydicom.sr.coding import Code

from .. import coding
from ..atomic import atomic_path
from ..volume import SeriesInfo


MANUFACTURER = "spine-idc"


@dataclasses.dataclass(frozen=True, kw_only=True)
class AlgorithmInfo:
    """The segmentation/measurement algorithm, as recorded in SEG and SR.

    ``family`` is a CID 7162 "Segmentation Algorithm Families" code: Morphological Operations for
    the classical pipeline (thresholding, connected components, morphology), Artificial
    Intelligence only for neural networks.  ``parameters`` go into Algorithm Parameters
    (0066,0032) as ``key=value`` pairs.
    """

    version: str
    name: str = "spine-idc classical"
    family: Code = coding.ALGORITHM_FAMILY_MORPHOLOGICAL
    parameters: Mapping[str, str] = dataclasses.field(default_factory=dict)


def deterministic_uid(*parts: str) -> str:
    """A UID that is a pure function of ``parts`` (pydicom's prefix plus a hash of them)."""
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[str(p) for p in parts])


def output_uid(info: SeriesInfo, algorithm: AlgorithmInfo, kind: str, what: str) -> str:
    """UID of an output (``kind`` "seg"/"sr", ``what`` "series"/"instance"/...) of a series."""
    # Parameters are part of the identity: a run with other settings is another object.
    params = sorted(f"{k}={v}" for k, v in algorithm.parameters.items())
    return deterministic_uid(
        info.series_instance_uid, algorithm.name, algorithm.version, *params, kind, what
    )


def tracking_uid(info: SeriesInfo, algorithm: AlgorithmInfo, level_name: str) -> str:
    """Tracking UID of one vertebra: shared by the SEG segment and the SR measurement group.

    It names the finding (this vertebra of this series by this algorithm version), so unlike
    the instance UIDs it does not change with parameters: the same vertebra stays tracked.
    """
    return deterministic_uid(
        info.series_instance_uid, algorithm.name, algorithm.version, "tracking", level_name
    )


#: Date-time attributes highdicom fills with the wall clock.  They are set from the source
#: series instead, so that an unchanged input gives byte-identical outputs (and publishing can
#: tell a real change from none): the content is *of* that acquisition, by a fixed algorithm.
_DATE_TIME_PAIRS = (("ContentDate", "ContentTime"), ("InstanceCreationDate", "InstanceCreationTime"),
                    ("SeriesDate", "SeriesTime"))


def source_date_time(datasets: Sequence) -> tuple[str, str]:
    """The source series' date and time (its series', else content's, else study's), or the
    DICOM epoch when it carries none."""
    first = datasets[0] if datasets else None
    for d_kw, t_kw in (("SeriesDate", "SeriesTime"), ("ContentDate", "ContentTime"),
                       ("StudyDate", "StudyTime"), ("AcquisitionDate", "AcquisitionTime")):
        date = str(getattr(first, d_kw, "") or "") if first is not None else ""
        if len(date) == 8 and date.isdigit():
            time_ = str(getattr(first, t_kw, "") or "").split(".")[0]
            return date, time_ if time_.isdigit() and len(time_) in (2, 4, 6) else "000000"
    return "19700101", "000000"


def pin_volatile(dataset, info: SeriesInfo, algorithm: AlgorithmInfo, kind: str,
                 when: tuple[str, str]) -> None:
    """Replace, in place, what highdicom draws at random or from the clock: the Dimension
    Organization UID (derived like the other UIDs) and the creation/content dates and times,
    and the contributing equipment's ContributionDateTime (set to ``when``)."""
    date, time_ = when
    for d_kw, t_kw in _DATE_TIME_PAIRS:
        if d_kw in dataset:
            setattr(dataset, d_kw, date)
        if t_kw in dataset:
            setattr(dataset, t_kw, time_)
    for item in dataset.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = date + time_
    uid = output_uid(info, algorithm, kind, "dimension-organization")
    for keyword in ("DimensionOrganizationSequence", "DimensionIndexSequence"):
        for item in dataset.get(keyword, []):
            if "DimensionOrganizationUID" in item:
                item.DimensionOrganizationUID = uid


def save_dataset(dataset, path: str | Path) -> Path:
    """Write a highdicom/pydicom dataset as a DICOM file, atomically."""
    path = Path(path)
    with atomic_path(path, suffix=".dcm") as tmp:
        dataset.save_as(tmp, enforce_file_format=True)
    return path
