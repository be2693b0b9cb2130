"""Coded concepts, defined once: the vertebra label table and the codes SEG and SR use.

Label values follow the VerSe challenge numbering (1-7 C1-C7, 8-19 T1-T12, 20-24 L1-L5,
26 sacrum), so VerSe masks and our label maps can be compared directly.  Vertebrae that the
segmenter finds but cannot name get values from :data:`UNIDENTIFIED_BASE` upwards, in
cranio-caudal order, and are coded as a generic vertebra.

Sources of the codes:

* vertebra levels: DICOM PS3.16 CID 7603 "Vertebra" (SNOMED CT);
* sacrum 54735007 and category 123037004 "Anatomical Structure": DICOM PS3.16 CID 7150 / 7151;
* measurement codes: DICOM PS3.16 (DCM 112031 "Attenuation Coefficient", SCT 118565006
  "Volume") and UCUM for units.
"""

from __future__ import annotations

import dataclasses
import enum

from highdicom.sr import CodedConcept  # noqa: F401  (re-exported for callers' convenience)
from pydicom.sr.coding import Code


class Region(enum.Enum):
    """Spinal region a level belongs to."""

    CERVICAL = "cervical"
    THORACIC = "thoracic"
    LUMBAR = "lumbar"
    SACRAL = "sacral"
    UNKNOWN = "unknown"


@dataclasses.dataclass(frozen=True)
class Level:
    """One row of the label table: a vertebra, its label value, code and display colour."""

    name: str
    value: int
    region: Region
    code: Code
    rgb: tuple[int, int, int]

    @property
    def index(self) -> int:
        """Cranio-caudal position among the named levels (C1 is 0); -1 if unidentified."""
        return _ORDER.get(self.name, -1)


CATEGORY_ANATOMICAL_STRUCTURE = Code("123037004", "SCT", "Anatomical Structure")
#: SNOMED CT "Vertebra" (bone structure of vertebra), for vertebrae whose level is unknown.
VERTEBRA_GENERIC = Code("51282000", "SCT", "Vertebra")

_SNOMED = {
    "C1": "14806007", "C2": "39976000", "C3": "113205007", "C4": "5329002", "C5": "36978003",
    "C6": "36054005", "C7": "87391001",
    "T1": "64864005", "T2": "53733008", "T3": "1626008", "T4": "73071006", "T5": "56401006",
    "T6": "45296009", "T7": "62487009", "T8": "11068009", "T9": "82687006", "T10": "7610001",
    "T11": "12989004", "T12": "23215003",
    "L1": "66794005", "L2": "14293000", "L3": "36470004", "L4": "11994002", "L5": "49668003",
    "sacrum": "54735007",
}

_NAMES = (
    [f"C{i}" for i in range(1, 8)]
    + [f"T{i}" for i in range(1, 13)]
    + [f"L{i}" for i in range(1, 6)]
    + ["sacrum"]
)
_ORDER = {name: i for i, name in enumerate(_NAMES)}
SACRUM_VALUE = 26
UNIDENTIFIED_BASE = 101


def _region(name: str) -> Region:
    return {"C": Region.CERVICAL, "T": Region.THORACIC, "L": Region.LUMBAR}.get(
        name[0], Region.SACRAL
    )


def _colour(i: int, n: int) -> tuple[int, int, int]:
    # A hue wheel, alternating lightness so neighbouring levels differ clearly in a viewer.
    import colorsys

    r, g, b = colorsys.hls_to_rgb((i * 0.37) % 1.0, 0.45 if i % 2 else 0.65, 0.75)
    return int(r * 255), int(g * 255), int(b * 255)


def _value(name: str) -> int:
    return SACRUM_VALUE if name == "sacrum" else _ORDER[name] + 1


LEVELS: tuple[Level, ...] = tuple(
    Level(
        name=name,
        value=_value(name),
        region=_region(name),
        code=Code(_SNOMED[name], "SCT", "Sacrum" if name == "sacrum" else f"{name} vertebra"),
        rgb=_colour(i, len(_NAMES)),
    )
    for i, name in enumerate(_NAMES)
)
LEVEL_BY_NAME = {lv.name: lv for lv in LEVELS}
LEVEL_BY_VALUE = {lv.value: lv for lv in LEVELS}


def level_for_value(value: int) -> Level:
    """The label-table row for a label value, including unidentified vertebrae (>= 101)."""
    if value in LEVEL_BY_VALUE:
        return LEVEL_BY_VALUE[value]
    if value >= UNIDENTIFIED_BASE:
        n = value - UNIDENTIFIED_BASE + 1
        return Level(
            name=f"vertebra{n}",
            value=value,
            region=Region.UNKNOWN,
            code=VERTEBRA_GENERIC,
            rgb=(200, 200, 200),
        )
    raise KeyError(f"label value {value} is not in the vertebra label table")


def level_for_index(index: int) -> Level:
    """The named level at cranio-caudal position ``index`` (0 is C1, 24 is sacrum)."""
    return LEVEL_BY_NAME[_NAMES[index]]


N_NAMED_LEVELS = len(_NAMES)

# --- SR measurement concepts -------------------------------------------------------------
VOLUME = Code("118565006", "SCT", "Volume")
ATTENUATION_COEFFICIENT = Code("112031", "DCM", "Attenuation Coefficient")
VERTEBRAL_BODY_HEIGHT = Code("121207", "DCM", "Height")
MEAN = Code("373098007", "SCT", "Mean")
MEDIAN = Code("373099004", "SCT", "Median")
UNIT_ML = Code("ml", "UCUM", "milliliter")
UNIT_MM = Code("mm", "UCUM", "millimeter")
UNIT_HU = Code("[hnsf'U]", "UCUM", "Hounsfield unit")
UNIT_RATIO = Code("1", "UCUM", "no units")
