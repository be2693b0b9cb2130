"""Vertebra segmentation: one small interface, several backends loaded lazily by name.

``get_backend("classical", spacing_mm=1.0).segment(ct, series_key=...)`` returns a
:class:`SegmentationResult` (whole-vertebra labels, vertebral-body labels, QC record).  Only
:mod:`spine_idc.segment.base` is imported here, so importing this package stays cheap.
"""

from .base import (
    Anchor,
    Backend,
    QCRecord,
    SegmentationResult,
    VertebraQC,
    available_backends,
    get_backend,
)

__all__ = [
    "Anchor",
    "Backend",
    "QCRecord",
    "SegmentationResult",
    "VertebraQC",
    "available_backends",
    "get_backend",
]
