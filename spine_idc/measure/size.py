"""Size: the whole vertebra's voxel count and volume (SR: volume in mm3)."""

from __future__ import annotations

from .base import Vertebra

FIELDS = [("voxel_count", int), ("volume_ml", float)]


def measure(v: Vertebra) -> dict:
    n = int(len(v.idx))
    return {"voxel_count": n, "volume_ml": float(n * (v.ct.voxel_volume_mm3 / 1000.0))}


def sr_items(m, site) -> list:
    import highdicom as hd

    from .. import coding

    return [hd.sr.Measurement(name=coding.VOLUME, value=m.volume_ml * 1000.0,
                              unit=coding.UNIT_MM3)]
