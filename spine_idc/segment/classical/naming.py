"""Naming the vertebrae: only from verified anchors, checked against the ribs and the spacing.

A name is a count from a landmark that fixes one level.  Four landmarks are used:

* the **sacrum** (:mod:`.sacrum`, verified by its alae and both sacroiliac joints): the
  vertebra above it is the last lumbar one;
* the **lowest rib-bearing vertebra** with a rib-free vertebra below it, which must be fully
  in view (:mod:`.ribs`): T12, the one below L1 (VerSe's rule: L1 is the first vertebra without ribs
  or with rib remnants under 4 cm);
* the **highest rib-bearing vertebra** with a rib-free vertebra above it, which must be fully
  in view: T1;
* the **dens** of C2 with C1's anterior arch in front of it (:mod:`.dens`): C2, and the ring of
  bone around the dens above it C1.

Then the names are checked, and withheld (left as generic vertebrae, flagged
``unidentified``, with the reason in the warnings) when any check fails -- a wrong name is
worse than none:

* anchors must agree.  The two exceptions are VerSe's transitional cases, which are named and
  flagged ``transitional``: 13 rib-bearing vertebrae between the two rib anchors (the
  thirteenth is T13) and 6 between the lowest rib and the sacrum (the sixth is L6).  Other
  disagreements (11 rib-bearing, 4 lumbar: a missing rib or a sacralised L5, which the image
  cannot tell apart) withhold every name;
* the ribs must fit the names: no vertebra named cervical or lumbar bears a rib, no vertebra
  named T2-T11 is seen free of ribs on both sides;
* the spacing must fit the names: each fully seen level's length (disc to disc) against the
  typical length of the level it is named, :data:`TYPICAL_LEVEL_MM`, must give one scale for
  the whole scan (a patient is small or large everywhere): the median within
  :data:`SCALE_RANGE`, every level within :data:`SCALE_SPREAD` of it and within
  :data:`LEVEL_RANGE` of its own typical length (a missed disc doubles one level, and next to
  levels of the same length -- the neck's -- the median alone would not show it).

The confidence of each name falls with its distance (in levels) from the nearest anchor it
was counted from, and is highest between two anchors that agree: a count between two
landmarks is verified at both ends.  It is calibrated against measured errors (see the
README's section on QC).

Over 400 lines: the counting from each anchor and the checks that may withhold the names
(anchors' agreement, ribs, spacing, transitional counts) must be read as one rule; split,
a check could be skipped by a path that did not call it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ... import coding
from ..base import Anchor
from .ribs import RibSides, RibState
from .work import SacrumEvidence

#: Typical length (mm along the canal, body and the disc below) of each level in an adult,
#: from C3 to L5 (Gilad and Nissan, J Anat 1985 for the thoracic and lumbar bodies; Panjabi
#: et al., Spine 1991 and 1992 for the cervical and thoracic ones; discs from the same
#: sources).  Only ratios between levels matter here: they fix the scan's scale.
TYPICAL_LEVEL_MM = {
    "C3": 17.0, "C4": 17.0, "C5": 17.0, "C6": 17.0, "C7": 18.0,
    "T1": 19.0, "T2": 20.0, "T3": 21.0, "T4": 21.5, "T5": 22.0, "T6": 22.5, "T7": 23.5,
    "T8": 24.0, "T9": 24.5, "T10": 25.5, "T11": 27.0, "T12": 28.5, "T13": 29.0,
    "L1": 31.0, "L2": 32.5, "L3": 33.5, "L4": 34.0, "L5": 34.0, "L6": 34.0,
}
#: The scan's scale (the median over its named levels of length / typical length) must lie
#: within this range (small to large adults), and every level within this factor of it
#: (lordosis and kyphosis lengthen or shorten single levels measured along the canal).
SCALE_RANGE = (0.7, 1.4)
SCALE_SPREAD = 1.4
#: Every single level within this range of its typical length.
LEVEL_RANGE = (0.6, 1.55)
#: Confidence of a name counted from one anchor, from two agreeing ones, and how much it
#: falls per level of distance from the anchor it was counted from (a missed or an extra disc
#: on the way shifts it).
ONE_ANCHOR = 0.75
TWO_ANCHORS = 0.92
PER_LEVEL = 0.015
#: A vertebra cut by the end of the view has its confidence multiplied by this.
INCOMPLETE = 0.8
#: A transitional count (13 rib-bearing or 6 lumbar vertebrae) is also what one false disc
#: gives: a body split in two.  Such a count is named only when every level it counts is at
#: least this fraction of their median length (a split leaves two short pieces; adjacent
#: lumbar or lower thoracic levels differ by about 10 %), and its names carry at most
#: :data:`TRANSITIONAL_CONFIDENCE`, below ``qc_pass``'s cut-off: on phantoms the segmenter
#: never yet counted a real transitional spine as one, while a split lumbar body under metal
#: streaks was named "L6" at 0.92 (bench/calibration.py, held-out seeds), so such names are
#: given, flagged, and not passed until right ones are measured.
TRANSITIONAL_REGULARITY = 0.8
TRANSITIONAL_CONFIDENCE = 0.45
#: Confidence given to vertebrae left unidentified (their masks may be fine; their names
#: are not claimed).
UNIDENTIFIED = 0.3
#: A vertebra cut by the view showing less of its body than this (mm along the spine) keeps
#: no name: a thoracic disc with its endplates is 4-6 mm, so such a piece may be the
#: neighbour's endplate and a disc, and its split from the neighbour cannot be checked against
#: a disc it does not show.
MIN_NAMED_PIECE_MM = 5.0
#: A rib-free vertebra cut by the end of the view still verifies the end of the rib cage
#: when the view shows at least this much of its body, as a fraction of the whole body of
#: the rib-bearing neighbour it is compared with.  The top of a chest CT often cuts C7 just
#: above its upper endplate; were it a T1 cut so, the part of it in view would be shorter
#: than T2's body (T1 is about as tall as T2), and its first rib, which joins the upper body
#: and the transverse process and runs downwards, would still be in the ribs' slab.
SEEN_AS_WHOLE = 1.0

_T = [f"T{i}" for i in range(1, 13)]
_CERVICAL = [f"C{i}" for i in range(1, 8)]
_LUMBAR = [f"L{i}" for i in range(1, 6)]


@dataclasses.dataclass
class Naming:
    """The outcome of naming: one label value per vertebra (internal order, caudal to
    cranial), per-vertebra confidence, the anchors, warnings for people, and flags."""

    values: list[int]
    confidence: list[float]
    anchors: list[Anchor]
    warnings: list[str]
    identified: bool
    conflict: bool = False
    transitional: str | None = None


def unidentified(n: int, anchors: list[Anchor], warnings: list[str], conflict: bool = False
                 ) -> Naming:
    """Generic vertebra values (101, 102, ... cranio-caudally) for all ``n`` vertebrae."""
    for a in anchors:
        a.used = False
    return Naming(
        values=[coding.UNIDENTIFIED_BASE + (n - 1 - k) for k in range(n)],
        confidence=[UNIDENTIFIED] * n, anchors=anchors, warnings=warnings, identified=False,
        conflict=conflict,
    )


def name_vertebrae(
    ribs: list[RibSides],
    sacrum: SacrumEvidence | None,
    sacrum_like: bool,
    complete: list[bool],
    level_mm: list[float | None],
    body_mm: list[float] | None = None,
    atlas: bool = False,
) -> Naming:
    """Name ``len(ribs)`` vertebrae (internal order, caudal to cranial; ``k = 0`` is the
    sacrum when ``sacrum_like``).

    Parameters
    ----------
    ribs:
        What each side of each vertebra shows (:func:`.ribs.find_ribs`).
    sacrum:
        The sacrum's evidence; only a verified one is an anchor.
    sacrum_like:
        Whether the lowest segment is sacrum-like bone (merged into one piece), verified or not.
    complete:
        Whether each vertebra is wholly in view (neither end of the column cuts it).
    level_mm:
        Each vertebra's length from its lower disc to its upper one (``None`` where a disc is
        not in view).
    body_mm:
        The length of each vertebra's body seen along the spine; a piece of a vertebra cut by
        the view shorter than :data:`MIN_NAMED_PIECE_MM` is not named.
    atlas:
        Whether the top vertebra is C1 and the one below it C2, from C2's dens with C1's
        anterior arch in front of it (:mod:`.dens`): an anchor.
    """
    n = len(ribs)
    warnings: list[str] = []
    anchors: list[Anchor] = []
    pos = lambda k: n - 1 - k  # noqa: E731  cranio-caudal position, 0 = top

    if sacrum is not None and sacrum.reason:
        warnings.append(sacrum.reason)
    sacrum_anchor = bool(sacrum is not None and sacrum.verified and sacrum_like)
    if sacrum_anchor:
        anchors.append(Anchor("sacrum", pos(0), "sacrum"))

    first = 1 if sacrum_like else 0
    bearing = [k for k in range(first, n) if ribs[k].count > 0]
    # The end of the rib cage names a level only where ribs articulate on both sides: a rib
    # seen on one side only may be a remnant, or a piece of the other side's rib missed.
    low = high = None
    if bearing:
        # The rib cage must be one run: a vertebra seen free of ribs between two rib-bearing
        # ones means a rib was missed or a rib was imagined.
        gaps = [k for k in range(min(bearing), max(bearing) + 1) if ribs[k].free]
        if gaps:
            warnings.append(
                "rib-bearing vertebrae are interrupted by a rib-free one: ribs are not used to "
                "name levels"
            )
        else:
            t = min(bearing)
            below = t - 1
            seen = lambda k, ref: complete[k] or bool(  # noqa: E731
                body_mm is not None and body_mm[k] >= SEEN_AS_WHOLE * body_mm[ref]
            )
            if (
                ribs[t].both and below >= first and ribs[below].free and seen(below, t)
                and not (sacrum_like and below == 0)
            ):
                low = t
                anchors.append(Anchor("lowest-rib", pos(t), "T12"))
            h = max(bearing)
            above = h + 1
            if ribs[h].both and above < n and ribs[above].free and seen(above, h):
                high = h
                anchors.append(Anchor("highest-rib", pos(h), "T1"))

    if atlas:
        anchors.append(Anchor("dens", pos(n - 2), "C2"))

    if not anchors:
        warnings.append(
            "no verified anchor (sacrum with both sacroiliac joints, lowest or highest "
            "rib-bearing vertebra with a rib-free neighbour, all in view): vertebrae are left "
            "unidentified"
        )
        return unidentified(n, anchors, warnings)

    names: list[str | None] = [None] * n
    transitional = None
    # Count from each anchor; a second anchor must land where the first one puts it.
    if low is not None:
        names[low] = "T12"
        for i, k in enumerate(range(low - 1, -1, -1)):
            names[k] = _LUMBAR[i] if i < 5 else ("L6" if i == 5 else None)
        up = _T[:11][::-1] + _CERVICAL[::-1]
        for i, k in enumerate(range(low + 1, n)):
            names[k] = up[i] if i < len(up) else None
        if high is not None:
            count = high - low + 1
            if count == 13:
                transitional = "T13"
                names[low] = "T13"
                for i, k in enumerate(range(low + 1, high + 1)):
                    names[k] = _T[::-1][i]
                for i, k in enumerate(range(high + 1, n)):
                    names[k] = _CERVICAL[::-1][i] if i < 7 else None
            elif count != 12:
                warnings.append(
                    f"{count} rib-bearing vertebrae between the lowest and the highest rib "
                    "(12 expected, 13 is T13): the ribs cannot name the levels"
                )
                return unidentified(n, anchors, warnings, conflict=True)
        if sacrum_like:
            lumbar = low - 1
            if lumbar == 6:
                transitional = transitional or "L6"
            # With a thirteenth rib-bearing vertebra the lumbar count is 4 or 5 (VerSe counts
            # T13 as an extra; the sacrum still follows the last lumbar vertebra).
            if lumbar in (5, 6) or (transitional == "T13" and lumbar == 4):
                names[0] = "sacrum"
            elif sacrum_anchor or lumbar >= 0:
                warnings.append(
                    f"{lumbar} vertebrae between the lowest rib and the sacrum (5 expected, 6 "
                    "is L6): a missing rib or a sacralised L5 cannot be told apart; levels "
                    "are left unidentified"
                )
                return unidentified(n, anchors, warnings, conflict=True)
    elif high is not None:
        names[high] = "T1"
        down = _T[1:] + _LUMBAR
        for i, k in enumerate(range(high - 1, -1, -1)):
            names[k] = down[i] if i < len(down) else None
        for i, k in enumerate(range(high + 1, n)):
            names[k] = _CERVICAL[::-1][i] if i < 7 else None
        if sacrum_like:
            if names[0] is not None and names[1] != "L5":
                warnings.append(
                    "counting down from T1 does not reach L5 above the sacrum: levels are "
                    "left unidentified"
                )
                return unidentified(n, anchors, warnings, conflict=True)
            names[0] = "sacrum"
    elif sacrum_anchor:  # the sacrum alone
        names[0] = "sacrum"
        up = _LUMBAR[::-1] + _T[::-1] + _CERVICAL[::-1]
        for i, k in enumerate(range(1, n)):
            names[k] = up[i] if i < len(up) else None
    if atlas:
        # Counted down from C1; another anchor must have counted up to the same C1 and C2.
        down = _CERVICAL + _T + _LUMBAR
        from_dens = [down[n - 1 - k] if n - 1 - k < len(down) else None for k in range(n)]
        if sacrum_like and n - 1 == len(down):
            from_dens[0] = "sacrum"
        if len(anchors) == 1:
            names = from_dens
        elif names[n - 1] != "C1" or names[n - 2] != "C2":
            warnings.append(
                f"C2 is seen at its dens, but counting from the other anchors names it "
                f"{names[n - 2] or 'nothing'}: levels are left unidentified"
            )
            return unidentified(n, anchors, warnings, conflict=True)

    if sacrum_like and names[0] != "sacrum":
        warnings.append("counting from the anchors does not end at the sacrum: levels are left "
                        "unidentified")
        return unidentified(n, anchors, warnings, conflict=True)
    if transitional:
        span = range(1, low) if transitional == "L6" else range(low, high + 1)
        problem = _irregular_count(list(span), transitional, level_mm, body_mm)
        if problem:
            warnings.append(problem + ": levels are left unidentified")
            return unidentified(n, anchors, warnings, conflict=True)
    # Beyond what a count can tell (past C1; a sixth vertebra below T12 with no sacrum in
    # view to tell L6 from S1): those vertebrae stay unnamed, the others keep their names.
    unnamed = [k for k in range(n) if names[k] is None or (names[k] == "L6" and not sacrum_like)]
    if unnamed:
        warnings.append(
            f"{len(unnamed)} vertebra(e) beyond what the anchors can count are left unidentified"
        )
    for k in unnamed:
        names[k] = None

    # A vertebra cut by the view that shows no ribs where its name needs them: its rib heads
    # may lie outside the view, or it is a piece that is not the vertebra the count gives.
    # Its name alone is withheld; the count from the anchors stands for the others.
    for k in range(n):
        if names[k] in _T[1:11] and ribs[k].free and not complete[k]:
            warnings.append(f"the vertebra counted as {names[k]} is cut by the view and shows no "
                            "ribs: its name is withheld")
            names[k] = None
    for k in range(n):
        if (body_mm is not None and names[k] is not None and names[k] != "sacrum"
                and not complete[k] and body_mm[k] < MIN_NAMED_PIECE_MM):
            warnings.append(f"the vertebra counted as {names[k]} shows only {body_mm[k]:.0f} mm "
                            "of its body at the edge of the view: its name is withheld")
            names[k] = None
    problem = _rib_mismatch(names, ribs, complete) or _spacing_mismatch(names, level_mm)
    if problem:
        warnings.append(problem + ": levels are left unidentified")
        return unidentified(n, anchors, warnings, conflict=True)

    # Confidence: distance from the nearest anchor; between two anchors, verified at both ends.
    anchor_k = [n - 1 - a.position for a in anchors]
    lo_a, hi_a = min(anchor_k), max(anchor_k)
    conf = []
    for k in range(n):
        if len(anchors) >= 2 and lo_a <= k <= hi_a:
            c = TWO_ANCHORS
        else:
            base = TWO_ANCHORS if len(anchors) >= 2 else ONE_ANCHOR
            c = base - PER_LEVEL * min(abs(k - a) for a in anchor_k)
        if not complete[k] and not (sacrum_like and k == 0):
            c *= INCOMPLETE  # cut by the view: its far disc, and so its extent, is unseen
        if transitional:
            c = min(c, TRANSITIONAL_CONFIDENCE)
        conf.append(round(max(c, UNIDENTIFIED), 3))
    if transitional:
        warnings.append(
            {"T13": "13 rib-bearing vertebrae: the lowest is named T13 (VerSe's rule)",
             "L6": "6 vertebrae between the lowest rib and the sacrum: the sixth is named L6 "
                   "(VerSe's rule)"}[transitional]
        )
    values = [
        coding.LEVEL_BY_NAME[nm].value if nm is not None else coding.UNIDENTIFIED_BASE + pos(k)
        for k, nm in enumerate(names)
    ]
    conf = [c if nm is not None else UNIDENTIFIED for c, nm in zip(conf, names)]
    return Naming(values=values, confidence=conf, anchors=anchors, warnings=warnings,
                  identified=True, transitional=transitional)


def _irregular_count(span: list[int], transitional: str, level_mm: list[float | None],
                     body_mm: list[float] | None) -> str | None:
    """Why the levels of a transitional count (``span``, internal order) do not look like
    whole levels, or ``None`` when they do (see :data:`TRANSITIONAL_REGULARITY`)."""
    what = {"T13": "13 rib-bearing vertebrae", "L6": "6 vertebrae between the lowest rib and "
            "the sacrum"}[transitional]
    lengths = [level_mm[k] if level_mm[k] is not None
               else (body_mm[k] if body_mm is not None else None) for k in span]
    if any(x is None for x in lengths):
        return f"{what}, but their lengths cannot all be measured to rule out a split body"
    median = float(np.median(lengths))
    ratio = min(lengths) / median if median > 0 else 0.0
    if ratio < TRANSITIONAL_REGULARITY:
        return (f"{what}, but one of them is only {ratio:.2f} of their median length: a body "
                "split by a false disc gives the same count")
    return None


def _rib_mismatch(names: list[str], ribs: list[RibSides], complete: list[bool]) -> str | None:
    for nm, r, whole in zip(names, ribs, complete):
        if nm is None:
            continue
        if nm[0] in "CL" and nm != "sacrum" and r.count > 0:
            return f"the vertebra named {nm} bears a rib"
        # A vertebra cut by the view may have its rib heads outside it: seen free of ribs
        # there proves nothing.
        if nm in _T[1:11] and r.free and whole:
            return f"the vertebra named {nm} is seen free of ribs on both sides"
    return None


def _spacing_mismatch(names: list[str], level_mm: list[float | None]) -> str | None:
    scales = [
        (nm, mm / TYPICAL_LEVEL_MM[nm]) for nm, mm in zip(names, level_mm)
        if mm is not None and nm is not None and nm in TYPICAL_LEVEL_MM
    ]
    if len(scales) < 2:
        return None
    scale = float(np.median([s for _, s in scales]))
    if not SCALE_RANGE[0] <= scale <= SCALE_RANGE[1]:
        return (
            f"the levels are {scale:.2f} times as long as the levels they are named "
            "(an adult's are within 0.7-1.4)"
        )
    for nm, s in scales:
        # A missed disc makes one level twice as long, a false one half as long: whatever
        # the patient's scale, no level is that far from its typical length.
        if not LEVEL_RANGE[0] <= s <= LEVEL_RANGE[1]:
            return (f"the level named {nm} is {s:.2f} times as long as a typical {nm} (a "
                    "missed or a false disc?)")
        if not scale / SCALE_SPREAD <= s <= scale * SCALE_SPREAD:
            return (
                f"the level named {nm} is {s / scale:.2f} times as long as its name implies "
                "beside its neighbours"
            )
    return None


__all__ = ["Naming", "RibState", "name_vertebrae", "unidentified"]
