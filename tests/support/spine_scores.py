"""How a labelling of vertebrae compares with a reference: shared by the segmenter's tests.

Levels are compared by overlap, not by label value, so that withheld names (generic
``vertebraN`` values) are judged by their masks all the same.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from spine_idc import coding

#: A reference level counts as in view when it holds at least this fraction of the median
#: reference level's voxels (slivers cut by the ends of the view are not levels to find).
VISIBLE_FRACTION = 0.5
#: A segment spans two levels when at least this fraction of each of two visible reference
#: levels lies in it.
SPAN_FRACTION = 0.25


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 2.0 * float((a & b).sum()) / s if s else 1.0


def vertebra_mask(labels: np.ndarray) -> np.ndarray:
    """Voxels of ``labels`` that hold a vertebra (not a disc, the canal or the cord)."""
    values = [int(v) for v in np.unique(labels) if v]
    keep = [v for v in values if coding.level_for_value(v).is_vertebra]
    return np.isin(labels, keep)


@dataclasses.dataclass
class Scores:
    visible: list[str]  # reference levels in view, cranio-caudally
    found: list[str]  # visible levels that a segment of their own covers (>= half of it)
    right: list[str]  # segments named as the reference level they mostly cover
    withheld: list[str]  # segments left generic, by the reference level they mostly cover
    wrong: list[tuple[str, str]]  # (our name, the reference level it mostly covers)
    spanning: list[str]  # our segments holding two visible levels
    level_dice: dict[str, float]  # visible level -> Dice with the segment that covers it most
    union_dice: float

    @property
    def mean_dice(self) -> float:
        return float(np.mean(list(self.level_dice.values()))) if self.level_dice else 0.0

    def line(self) -> str:
        return (
            f"{len(self.found)}/{len(self.visible)} levels found, names right {len(self.right)} "
            f"withheld {len(self.withheld)} wrong {self.wrong or 0}, spanning {self.spanning or 0}, "
            f"mean Dice {self.mean_dice:.3f}, union Dice {self.union_dice:.3f}"
        )


def score(truth: np.ndarray, labels: np.ndarray, names: dict[int, str],
          true_names: dict[int, str] | None = None) -> Scores:
    """Compare ``labels`` (our values, named by ``names``) with ``truth`` (coding values;
    ``true_names`` overrides the name of a truth value, e.g. for transitional anatomy)."""
    true_names = true_names or {}
    # Vertebrae only: discs and the canal in the same label map are scored on their own.
    labels = np.where(vertebra_mask(labels), labels, 0)
    tname = lambda v: true_names.get(int(v), coding.level_for_value(int(v)).name)  # noqa: E731
    tvals = [int(v) for v in np.unique(truth) if v]
    counts = {v: int((truth == v).sum()) for v in tvals}
    med = float(np.median(list(counts.values()))) if counts else 0.0
    visible = [v for v in tvals if counts[v] >= VISIBLE_FRACTION * med]
    found, level_dice = [], {}
    for v in visible:
        t = truth == v
        ov = labels[t]
        ov = ov[ov > 0]
        if not ov.size:
            level_dice[tname(v)] = 0.0
            continue
        vals, cnt = np.unique(ov, return_counts=True)
        best = int(vals[cnt.argmax()])
        level_dice[tname(v)] = dice(t, labels == best)
        if cnt.max() >= 0.5 * counts[v]:
            found.append(tname(v))
    right, withheld, wrong, spanning = [], [], [], []
    for value, name in names.items():
        m = labels == value
        if not m.any():
            continue
        ov = truth[m]
        covered = [v for v in visible if (ov == v).sum() >= SPAN_FRACTION * counts[v]]
        if len(covered) >= 2:
            spanning.append(name)
        ov = ov[ov > 0]
        main = tname(np.bincount(ov).argmax()) if ov.size else None
        if name.startswith("vertebra"):
            withheld.append(main or name)
        elif name == main:
            right.append(name)
        else:
            wrong.append((name, main))
    return Scores(
        visible=[tname(v) for v in visible], found=found, right=right, withheld=withheld,
        wrong=wrong, spanning=spanning, level_dice=level_dice,
        union_dice=dice(truth > 0, labels > 0),
    )


def labels_on_grid(path: Path, shape, affine_ras: np.ndarray) -> np.ndarray:
    """A label NIfTI resampled onto ``shape``/``affine_ras`` by nearest neighbour, in mm space."""
    import nibabel as nib  # noqa: PLC0415 - only the real-data comparisons need it

    img = nib.load(str(path))
    data = np.asarray(img.dataobj)
    # voxel (i, j, k) of our grid -> RAS mm -> voxel of the label grid
    m = np.linalg.inv(img.affine) @ affine_ras
    idx = np.indices(shape).reshape(3, -1).astype(float)
    src = m[:3, :3] @ idx + m[:3, 3:4]
    src = np.rint(src).astype(int)
    ok = np.all((src >= 0) & (src < np.array(data.shape)[:, None]), axis=0)
    out = np.zeros(idx.shape[1], dtype=data.dtype)
    out[ok] = data[src[0, ok], src[1, ok], src[2, ok]]
    return out.reshape(shape)
