"""The DICOM objects a run writes: the Segmentation (:mod:`.seg`) and the TID 1500
measurement report (:mod:`.sr`), both built with highdicom, and what fixes their identity
(:mod:`.identity`: the algorithm, deterministic UIDs, dates from the source, atomic writes).
"""

from .identity import AlgorithmInfo, deterministic_uid
from .seg import build_seg, write_seg
from .sr import build_sr, write_sr

__all__ = ["AlgorithmInfo", "build_seg", "build_sr", "deterministic_uid", "write_seg", "write_sr"]
