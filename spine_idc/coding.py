"""Coded concepts, defined once: the vertebra label table and the codes SEG and SR use.

Label values follow the VerSe challenge numbering (1-7 C1-C7, 8-19 T1-T12, 20-24 L1-L5,
26 sacrum), so VerSe masks and our label maps can be compared directly.  Vertebrae that the
segmenter finds but cannot name get values from :data:`UNIDENTIFIED_BASE` upwards, in
cranio-caudal order, and are coded as a generic vertebra.

Sources of the codes:

* vertebra levels: DICOM PS3.16 CID 7603 "Vertebra" (SNOMED CT);
* sacrum 54735007, generic vertebra 51282000 and category 123037004 "Anatomical Structure" (see the note at CATEGORY_ANATOMICAL_STRUCTURE):
  DICOM PS3.16 CID 7151 / CID 7150;
* measurement codes: DICOM PS3.16 (DCM 112031 "Attenuation Coefficient", SCT 118565006
  "Volume") and UCUM for units.
* SR context: CID 100 (procedure), CID 2 (anatomic modifiers), CID 230 (yes/no), CID 7162
  (algorithm families); concepts without a standard code use the local scheme ``99SPINEIDC``.
"""

from __future__ import annotations

import dataclasses
import enum

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


#: Segmented property category "Anatomical Structure" as SCT 123037004, the code that IDC's
#: existing vertebra SEGs (TotalSegmentator on NLST, dcmqi's mapping of SRT T-D000A) carry, so
#: one BigQuery filter finds theirs and ours.  pydicom's CID 7150 table lists 91723000 for the
#: same meaning; we keep 123037004 for interoperability with the IDC collections.
CATEGORY_ANATOMICAL_STRUCTURE = Code("123037004", "SCT", "Anatomical Structure")
#: SCT 51282000 with the meaning "Vertebra" as listed in CID 7151 "Segmentation Property Types"
#: (``codes.cid7151.Vertebra``; SNOMED's FSN is "Bone structure of spine"), for vertebrae whose
#: level is unknown.
VERTEBRA_GENERIC = Code("51282000", "SCT", "Vertebra")
#: CID 7151 / CID 4 "Spine" (structure of vertebral column): the finding site when the level
#: is unknown.
SPINE = Code("421060004", "SCT", "Spine")

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

# --- SEG algorithm families: DICOM PS3.16 CID 7162 "Segmentation Algorithm Families" ---------
#: The classical segmenter (thresholding, connected components, morphology).
ALGORITHM_FAMILY_MORPHOLOGICAL = Code("123104", "DCM", "Morphological Operations")
#: Neural-network segmenters.
ALGORITHM_FAMILY_AI = Code("123110", "DCM", "Artificial Intelligence")

# --- SR document context -----------------------------------------------------------------
#: TID 1500 "Procedure Reported", CID 100 "Quantitative Diagnostic Imaging Procedures": CID 100
#: has no spine-specific CT procedure, so the generic CT one.
PROCEDURE_CT = Code("25045-6", "LN", "CT unspecified body region")
#: CID 2 "Anatomic Modifiers", used as topographical modifiers of a height's finding site to
#: tell the anterior, middle and posterior body heights apart (TID 300 row "Finding Site").
ANTERIOR = Code("255549009", "SCT", "Anterior")
CENTRAL = Code("26216008", "SCT", "Central")
POSTERIOR = Code("255551008", "SCT", "Posterior")
#: CID 230 "Yes-No", values of the QC qualitative evaluations.
YES = Code("373066001", "SCT", "Yes")
NO = Code("373067005", "SCT", "No")

# --- Local codes (PS3.16 section 8.2: private coding schemes start with "99") --------------
# No standard code exists for these concepts; the SR declares the scheme in its Coding Scheme
# Identification Sequence.  Code values are at most 16 characters (VR SH).
LOCAL_SCHEME = "99SPINEIDC"
LOCAL_SCHEME_NAME = "spine-idc local codes"
#: Measurement method of the attenuation values: the vertebral body eroded by a fixed distance,
#: i.e. cancellous bone without the cortical shell.
TRABECULAR_CORE = Code("TRABCORE", LOCAL_SCHEME, "Trabecular core of vertebral body")
#: min(anterior, middle) / posterior vertebral body height (Genant semi-quantitative grading).
BODY_HEIGHT_RATIO = Code("HEIGHTRATIO", LOCAL_SCHEME, "Vertebral body height ratio")
#: QC questions answered Yes/No (CID 230) per vertebra or per series.
QC_TOUCHES_BORDER = Code("QCBORDER", LOCAL_SCHEME, "Touches image border")
QC_LEVEL_IDENTIFIED = Code("QCLEVEL", LOCAL_SCHEME, "Vertebral level identified")
QC_TRABECULAR_CORE = Code("QCTRABCORE", LOCAL_SCHEME, "Trabecular core large enough")
#: Series-level QC keys accepted by ``spine_idc.dicom_sr.build_sr(qc=...)``.
QC_CONCEPTS = {
    "touches_border": QC_TOUCHES_BORDER,
    "level_identified": QC_LEVEL_IDENTIFIED,
    "trabecular_core": QC_TRABECULAR_CORE,
    "labels_contiguous": Code("QCCONTIG", LOCAL_SCHEME, "Vertebral labels contiguous"),
    "spine_found": Code("QCSPINE", LOCAL_SCHEME, "Spine found"),
}
