"""Position: the vertebra's centroid in DICOM patient coordinates (LPS, mm); not an SR
measurement (the SEG's segment locates the vertebra)."""

from __future__ import annotations

from .base import Vertebra

FIELDS = [("centroid_lps_mm", tuple[float, float, float])]
#: In the cohort table the centroid is three columns.
COLUMNS = ["centroid_x_mm", "centroid_y_mm", "centroid_z_mm"]


def measure(v: Vertebra) -> dict:
    c = v.centroid
    return {"centroid_lps_mm": (float(c[0]), float(c[1]), float(c[2]))}


def row(m) -> dict:
    return dict(zip(COLUMNS, m.centroid_lps_mm))


def sr_items(m, site) -> list:
    return []
