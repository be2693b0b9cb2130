"""Whether the vertebra touches the edge of the image: its volume and heights are then lower
bounds (the cohort's ``qc_pass`` is false); not an SR measurement."""

from __future__ import annotations

from .base import Vertebra

FIELDS = [("touches_border", bool)]


def measure(v: Vertebra) -> dict:
    return {"touches_border": bool(any(s.start == 0 or s.stop == n
                                       for s, n in zip(v.box, v.shape)))}


def sr_items(m, site) -> list:
    return []
