"""Coded concepts, defined once: the label table and the codes SEG and SR use.

Label values
------------
Vertebrae follow the VerSe challenge numbering, so VerSe masks and our label maps can be compared
directly.  VerSe uses 1-7 C1-C7, 8-19 T1-T12, 20-24 L1-L5, 25 L6, 26 sacrum, 27 coccyx and 28 T13
(the ``v_dict`` of VerSe's ``data_utilities.py``); we take over 1-26 and 28 (L6 and T13 for
transitional anatomy) and leave 27 unused.  Structures VerSe does not
label get values no VerSe mask can hold:

* 29 S1: the first value after VerSe's range.  TotalSegmentator (v2) has a class
  ``vertebrae_S1`` beside ``sacrum``; a backend that labels S1 apart writes 29 for S1 and 26 for
  the rest of the sacrum, one that does not writes 26 for the whole sacrum, as VerSe does.
* 60 spinal cord and 61 spinal canal: the values SPINEPS / TPTBox (the VerSe group's successor
  tools) give them;
* intervertebral discs: SPINEPS numbers a disc 100 + the value of the vertebra above it, which
  would collide with our unidentified vertebrae, so we use 200 + that value (202 C2/C3 ...
  219 T12/L1 ... 224 L5/S1) and 230-233 for the discs next to a T13 or an L6 (T12/T13, T13/L1,
  L5/L6, L6/S1), whose neighbours' values do not tell them apart.  Discs between vertebrae the
  segmenter cannot name get values from :data:`DISC_UNIDENTIFIED_BASE` upwards (151-199),
  cranio-caudally, like unidentified vertebrae (101-149).

Vertebrae the segmenter finds but cannot name get values from :data:`UNIDENTIFIED_BASE` upwards,
in cranio-caudal order, and are coded as a generic vertebra.  :data:`LEVELS` lists the 25 levels
the classical segmenter names (C1-L5 and sacrum, in cranio-caudal order, ``index`` 0-24);
:data:`LABEL_TABLE` is every row, including S1 and the spinal cord for network backends.

Sources of the codes (checked by ``tests/test_coding.py`` against pydicom's copy of PS3.16)
-----------------------------------------------------------------------------------------
* C1-L5: DICOM PS3.16 CID 7603 "Vertebra" (SNOMED CT), identical in code and meaning to
  TotalSegmentator's ``totalsegmentator_snomed_mapping.csv`` (v2.18);
* sacrum 54735007, spinal cord 2748008, generic vertebra 51282000 and spine 421060004:
  CID 7151 "Segmentation Property Types" (the first three also in TotalSegmentator's table,
  with the same meanings);
* discs C2/C3-L5/S1: CID 7604 "Intervertebral Disc" (also in CID 7151), one concept per pair
  ("T11/T12 disc" is SCT 1537001);
* a disc whose neighbours are unnamed, or that joins a T13 or an L6 (no pair concept exists):
  SCT 360499006 "Intervertebral disc", the code TotalSegmentator's DICOM writer gives its
  ``intervertebral_discs`` class (``ADDITIONAL_SNOMED_TYPES``); no PS3.16 context group lists a
  generic disc, and CID 7151 is extensible;
* spinal canal 61853006 "Vertebral canal": CID 8134 "Anatomic Structure" (and CID 6115);
  CID 7151 has the cord but not the canal, and CT shows the canal (cord, CSF and epidural fat
  together), not the cord;
* S1 65985001 "S1 vertebra": TotalSegmentator's table; no PS3.16 context group has an S1
  concept (CID 7151 and CID 7603 stop at L5, then "Sacrum");
* category 123037004 "Anatomical Structure": see the note at
  :data:`CATEGORY_ANATOMICAL_STRUCTURE`;
* measurements: CID 7469 "Generic Intensity and Size Measurements" (Volume, Attenuation
  Coefficient, Height), CID 7464 "General Region of Interest Measurement Modifiers" (Mean,
  Median, the TID 1419 "Derivation"), CID 7181 units (UCUM);
* SR context: CID 100 (procedure), CID 2 (anatomic modifiers), CID 230 (yes/no), CID 7162
  (algorithm families); concepts without a standard code use the local scheme ``99SPINEIDC``.
"""

from __future__ import annotations

import dataclasses
import enum

from pydicom.sr.coding import Code


class Region(enum.Enum):
    """Spinal region a row of the label table belongs to."""

    CERVICAL = "cervical"
    THORACIC = "thoracic"
    LUMBAR = "lumbar"
    SACRAL = "sacral"
    UNKNOWN = "unknown"
    #: Not a vertebra (the spinal cord and canal run through several regions).
    NONE = "none"
    #: An intervertebral disc (between two vertebrae; not bone).
    DISC = "disc"


@dataclasses.dataclass(frozen=True)
class Level:
    """One row of the label table: a vertebra (or the spinal cord), its value, code and colour."""

    name: str
    value: int
    region: Region
    code: Code
    rgb: tuple[int, int, int]

    @property
    def index(self) -> int:
        """Position among the classical segmenter's :data:`LEVELS` (C1 is 0, sacrum 24); -1 for
        other rows (S1, spinal cord) and unidentified vertebrae."""
        return _ORDER.get(self.name, -1)

    @property
    def is_vertebra(self) -> bool:
        """Whether the row is a vertebra (or the sacrum), not another structure."""
        return self.region not in (Region.NONE, Region.DISC)

    @property
    def rank(self) -> float:
        """Cranio-caudal sort key of a named row (S1 between L5 and sacrum, the cord last);
        unidentified vertebrae have none (``inf``): only their position orders them."""
        if self.region is Region.DISC and self.name not in _RANK:
            # unnamed discs: after the named ones, before the cord, in their own order
            return len(_NAMES) + 0.5 + int(self.name.removeprefix("disc")) / 100.0
        return _RANK.get(self.name, float("inf"))


#: Segmented property category (and SR finding category) "Anatomical Structure" as SCT
#: 123037004.  This is the code TotalSegmentator's table, dcmqi/Slicer terminologies and IDC's
#: existing vertebra SEGs carry, so one BigQuery filter finds theirs and ours.  PS3.16 CID 7150
#: "Segmentation Property Categories" lists SCT 91723000 for "Anatomical Structure" instead
#: (SNOMED CT's own name for 123037004 is "Body structure"); the issue asks for 123037004 and we
#: keep it for interoperability with the IDC collections.
CATEGORY_ANATOMICAL_STRUCTURE = Code("123037004", "SCT", "Anatomical Structure")
#: SCT 51282000 with the meaning "Vertebra" as listed in CID 7151 "Segmentation Property Types"
#: (``codes.cid7151.Vertebra``; SNOMED's FSN is "Bone structure of spine"), for vertebrae whose
#: level is unknown.
VERTEBRA_GENERIC = Code("51282000", "SCT", "Vertebra")
#: CID 7151 / CID 4 "Spine" (structure of vertebral column): the finding site when the level
#: is unknown.
SPINE = Code("421060004", "SCT", "Spine")

#: CID 7603 "Vertebra": C1-L5, SNOMED CT concept ids.
_SNOMED = {
    "C1": "14806007", "C2": "39976000", "C3": "113205007", "C4": "5329002", "C5": "36978003",
    "C6": "36054005", "C7": "87391001",
    "T1": "64864005", "T2": "53733008", "T3": "1626008", "T4": "73071006", "T5": "56401006",
    "T6": "45296009", "T7": "62487009", "T8": "11068009", "T9": "82687006", "T10": "7610001",
    "T11": "12989004", "T12": "23215003",
    "L1": "66794005", "L2": "14293000", "L3": "36470004", "L4": "11994002", "L5": "49668003",
}

_NAMES = (
    [f"C{i}" for i in range(1, 8)]
    + [f"T{i}" for i in range(1, 13)]
    + [f"L{i}" for i in range(1, 6)]
    + ["sacrum"]
)
_ORDER = {name: i for i, name in enumerate(_NAMES)}
_RANK: dict[str, float] = {
    **_ORDER, "T13": _ORDER["T12"] + 0.5, "L6": _ORDER["L5"] + 0.25, "S1": _ORDER["L5"] + 0.5,
    "spinal_cord": len(_NAMES) + 1.0,
}
SACRUM_VALUE = 26
#: Transitional levels, with VerSe's values: a sixth lumbar vertebra (L6) and a thirteenth
#: rib-bearing one (T13).
L6_VALUE = 25
T13_VALUE = 28
#: S1 when a backend labels it apart from the rest of the sacrum (not a VerSe value).
S1_VALUE = 29
#: The spinal cord, as SPINEPS / TPTBox number it (not a VerSe value).
SPINAL_CORD_VALUE = 60
#: The spinal canal, as SPINEPS / TPTBox number it.
SPINAL_CANAL_VALUE = 61
UNIDENTIFIED_BASE = 101
#: Unidentified vertebrae take 101..149, unidentified discs 151..199.
UNIDENTIFIED_MAX = 149
DISC_UNIDENTIFIED_BASE = 151
DISC_UNIDENTIFIED_MAX = 199
#: A named disc is 200 + the value of the vertebra above it (see the module docstring).
DISC_BASE = 200
#: Discs next to transitional levels: (upper, lower) -> value.
_TRANSITIONAL_DISCS = {("T12", "T13"): 230, ("T13", "L1"): 231, ("L5", "L6"): 232,
                       ("L6", "sacrum"): 233}
#: CID 7604 "Intervertebral Disc" (SNOMED CT), keyed by the vertebra above.
_DISC_SNOMED = {
    "C2": "1078209008", "C3": "58820006", "C4": "49400002", "C5": "73959003", "C6": "75095006",
    "C7": "37414007", "T1": "40908007", "T2": "6004007", "T3": "2620004", "T4": "82965004",
    "T5": "72692000", "T6": "74401007", "T7": "28693002", "T8": "9188009", "T9": "113209001",
    "T10": "34959001", "T11": "1537001", "T12": "76206002", "L1": "80064006", "L2": "67459009",
    "L3": "62551000", "L4": "84020006", "L5": "715056000",
}
#: A disc whose pair has no concept of its own (TotalSegmentator's code, see above).
DISC_GENERIC = Code("360499006", "SCT", "Intervertebral disc")


def _region(name: str) -> Region:
    return {"C": Region.CERVICAL, "T": Region.THORACIC, "L": Region.LUMBAR}.get(
        name[0], Region.SACRAL
    )


def _colour(i: int) -> tuple[int, int, int]:
    # A hue wheel, alternating lightness so neighbouring levels differ clearly in a viewer.
    import colorsys

    r, g, b = colorsys.hls_to_rgb((i * 0.37) % 1.0, 0.45 if i % 2 else 0.65, 0.75)
    return int(r * 255), int(g * 255), int(b * 255)


def _value(name: str) -> int:
    return SACRUM_VALUE if name == "sacrum" else _ORDER[name] + 1


#: The levels the classical segmenter names, cranio-caudally: ``LEVELS[i].index == i``.
LEVELS: tuple[Level, ...] = tuple(
    Level(
        name=name,
        value=_value(name),
        region=_region(name),
        code=Code("54735007", "SCT", "Sacrum") if name == "sacrum"
        else Code(_SNOMED[name], "SCT", f"{name} vertebra"),
        rgb=_colour(i),
    )
    for i, name in enumerate(_NAMES)
)
#: Rows for transitional levels and for structures only a network backend labels (see the
#: module docstring).  PS3.16 has no concept for a thirteenth thoracic or a sixth lumbar
#: vertebra (CID 7603 stops at T12 and L5), so they are coded as the generic vertebra and named
#: by their segment label.
EXTRA_ROWS: tuple[Level, ...] = (
    # Colour indices chosen so that each differs clearly from the levels it sits between.
    Level("T13", T13_VALUE, Region.THORACIC, VERTEBRA_GENERIC, _colour(55)),
    Level("L6", L6_VALUE, Region.LUMBAR, VERTEBRA_GENERIC, _colour(32)),
    Level("S1", S1_VALUE, Region.SACRAL, Code("65985001", "SCT", "S1 vertebra"),
          _colour(len(_NAMES))),
    # TotalSegmentator's colour for the cord.
    Level("spinal_cord", SPINAL_CORD_VALUE, Region.NONE, Code("2748008", "SCT", "Spinal cord"),
          (255, 215, 0)),
    Level("spinal_canal", SPINAL_CANAL_VALUE, Region.NONE,
          Code("61853006", "SCT", "Vertebral canal"), (120, 200, 255)),
)
#: The whole label table: every named label value and its codes.
LABEL_TABLE: tuple[Level, ...] = LEVELS + EXTRA_ROWS
LEVEL_BY_NAME = {lv.name: lv for lv in LABEL_TABLE}
LEVEL_BY_VALUE = {lv.value: lv for lv in LABEL_TABLE}

#: Disc colours: a pale grey-blue, lighter and darker in turn, so that discs read as soft
#: tissue beside the coloured bones and neighbours still differ.
_DISC_RGB = ((150, 170, 200), (110, 130, 170))


def _disc_rows() -> tuple[Level, ...]:
    rows = []
    names = list(_DISC_SNOMED)
    for i, upper in enumerate(names):
        lower = _NAMES[_ORDER[upper] + 1]
        name = f"{upper}/{'S1' if lower == 'sacrum' else lower} disc"
        value = DISC_BASE + LEVEL_BY_NAME[upper].value
        rows.append(Level(name, value, Region.DISC,
                          Code(_DISC_SNOMED[upper], "SCT", name), _DISC_RGB[i % 2]))
    for (upper, lower), value in _TRANSITIONAL_DISCS.items():
        name = f"{upper}/{'S1' if lower == 'sacrum' else lower} disc"
        rows.append(Level(name, value, Region.DISC, DISC_GENERIC, _DISC_RGB[value % 2]))
    return tuple(rows)


#: Intervertebral discs by the pair of levels they join (CID 7604, plus the transitional pairs).
DISC_TABLE: tuple[Level, ...] = _disc_rows()
DISC_BY_VALUE = {d.value: d for d in DISC_TABLE}
DISC_BY_NAME = {d.name: d for d in DISC_TABLE}
# Discs sort just below the vertebra above them; the canal after the cord.
_RANK.update({d.name: _RANK[d.name.split("/")[0]] + 0.6 for d in DISC_TABLE})
_RANK["spinal_canal"] = len(_NAMES) + 2.0


def disc_value(upper: str, lower: str) -> int | None:
    """Label value of the disc between named vertebrae ``upper`` and ``lower`` (the level below
    it), or ``None`` when they are not neighbours."""
    if (upper, lower) in _TRANSITIONAL_DISCS:
        return _TRANSITIONAL_DISCS[(upper, lower)]
    if upper in _DISC_SNOMED and upper in _ORDER and lower in _ORDER:
        if _ORDER[lower] == _ORDER[upper] + 1:
            return DISC_BASE + LEVEL_BY_NAME[upper].value
    return None


def is_unidentified(value: int) -> bool:
    """Whether ``value`` is a vertebra or a disc the segmenter found but could not name."""
    return (UNIDENTIFIED_BASE <= value <= UNIDENTIFIED_MAX
            or DISC_UNIDENTIFIED_BASE <= value <= DISC_UNIDENTIFIED_MAX)


def is_unidentified_vertebra(value: int) -> bool:
    """Whether ``value`` is a vertebra the segmenter found but could not name."""
    return UNIDENTIFIED_BASE <= value <= UNIDENTIFIED_MAX


def level_for_value(value: int) -> Level:
    """The label-table row for a label value, including unidentified vertebrae (101-149),
    discs (named 202-233, unidentified 151-199) and the canal (61)."""
    if value in LEVEL_BY_VALUE:
        return LEVEL_BY_VALUE[value]
    if value in DISC_BY_VALUE:
        return DISC_BY_VALUE[value]
    if is_unidentified_vertebra(value):
        n = value - UNIDENTIFIED_BASE + 1
        return Level(
            name=f"vertebra{n}",
            value=value,
            region=Region.UNKNOWN,
            code=VERTEBRA_GENERIC,
            rgb=(200, 200, 200),
        )
    if DISC_UNIDENTIFIED_BASE <= value <= DISC_UNIDENTIFIED_MAX:
        n = value - DISC_UNIDENTIFIED_BASE + 1
        return Level(name=f"disc{n}", value=value, region=Region.DISC, code=DISC_GENERIC,
                     rgb=_DISC_RGB[n % 2])
    raise KeyError(f"label value {value} is not in the label table")


def level_for_index(index: int) -> Level:
    """The named level at cranio-caudal position ``index`` of :data:`LEVELS` (0 is C1, 24 is
    sacrum)."""
    return LEVEL_BY_NAME[_NAMES[index]]


N_NAMED_LEVELS = len(_NAMES)

# --- SR measurement concepts -------------------------------------------------------------
# TID 1411 includes TID 1419 "ROI Measurements": concept names from CID 7469 "Generic Intensity
# and Size Measurements", units from CID 7181 (UCUM), Derivation (DCM 121401) from CID 7464.
# Code meanings are those of PS3.16.
#: Volume of the segment, from its voxel count (the IBSI "volume (voxel counting)" definition).
VOLUME = Code("118565006", "SCT", "Volume")
#: CT numbers of the trabecular core, with Derivation Mean or Median.
ATTENUATION_COEFFICIENT = Code("112031", "DCM", "Attenuation Coefficient")
VERTEBRAL_BODY_HEIGHT = Code("121207", "DCM", "Height")
MEAN = Code("373098007", "SCT", "Mean")
MEDIAN = Code("373099004", "SCT", "Median")
#: CID 7181 has mm3 and cm3 but no ml, so volumes are reported in mm3.
UNIT_MM3 = Code("mm3", "UCUM", "cubic millimeter")
UNIT_MM = Code("mm", "UCUM", "mm")
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
#: Series-level QC keys accepted by ``spine_idc.dicom.sr.build_sr(qc=...)``.
QC_CONCEPTS = {
    "touches_border": QC_TOUCHES_BORDER,
    "level_identified": QC_LEVEL_IDENTIFIED,
    "trabecular_core": QC_TRABECULAR_CORE,
    "labels_contiguous": Code("QCCONTIG", LOCAL_SCHEME, "Vertebral labels contiguous"),
    "spine_found": Code("QCSPINE", LOCAL_SCHEME, "Spine found"),
}
