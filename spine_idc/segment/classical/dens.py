"""The dens of C2 and the ring of C1: the top of the spine, an anchor for the names.

C1 (the atlas) has no body.  In its place stands the dens, a peg of C2 about 10 mm across
that rises from C2's body, with no disc between them, to the top of C1's anterior arch.  The
arch lies just in front of the dens, 1-3 mm away (the atlanto-dental interval; over 3 mm is
abnormal in adults), and is only about 5 mm thick; in front of it is the soft tissue of the
pharynx.  So in an axial plane through C1, the midline in front of the canal reads, from
back to front: the canal, a peg of bone 6-16 mm deep, a short dark gap, a thin bar of bone,
then soft tissue for centimetres.  No other level shows this: in front of the canal of every
other vertebra lies a body 15-35 mm deep whose marrow, when darker than its cortex, is a wide
dip, not a narrow one, and nothing bony lies in front of it.

A stack of such planes at the top of the column is C1's arch: the body it rises from is C2
(where the neck is in view, the issue's "C2 from the dens").  Everything above is the skull
(clivus, occipital condyles), never a vertebra.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .vertebrae import BodyRun

#: The peg behind the gap (the dens, front to back) and the bar in front of it (C1's
#: anterior arch), mm; the gap between them (the atlanto-dental interval) at most this wide.
DENS_DEPTH_MM = (6.0, 16.0)
ARCH_DEPTH_MM = (2.0, 9.0)
MAX_GAP_MM = 4.0
#: The gap is darker than this fraction of the dimmer of the two bones beside it.
GAP_FRACTION = 0.7
#: Bone, for this test, is at least this bright: the soft tissue of a neck, noisy and
#: textured, can reach a faint scan's bone threshold, and the arch and the dens' cortex are
#: far brighter.
MIN_BONE_HU = 150.0
#: How far (mm) in front of the canal's centre the midline is read.
REACH_MM = 45.0
#: The dens is 8-11 mm wide in adults; a cervical body is 15-20 mm.  A body with an anterior
#: osteophyte split off by a thin line shows the same front-to-back pattern as the dens and
#: its arch, but not this narrow.
MAX_DENS_WIDTH_MM = 14.0
#: Soft tissue in front of the arch for at least this far (mm).
SOFT_IN_FRONT_MM = 6.0
#: The arch must be seen over at least this length of the spine (mm): it is about 10 mm tall.
MIN_ARCH_MM = 4.0
#: The dens rises about this far (mm) above C2's body before the arch lies in front of it,
#: and its tip reaches about this far above the arch's highest plane seen.
DENS_BELOW_ARCH_MM = 5.0
TIP_ABOVE_ARCH_MM = 2.0
#: C2 from its body's lower endplate to the dens' tip (mm): about 35-42 in adults, while a
#: piece of the dens alone is under 25 and C2 with C3 below it over 50 (C3's body and disc
#: add 17-20 mm).  Measured along the curved canal, so a little shorter than straight.
C2_HEIGHT_MM = (26.0, 48.0)
#: How far (mm) below the arch the dens is followed down to C2's body.
MAX_BODY_TO_ARCH_MM = 16.0
#: Above the arch, within this distance (mm), the canal's front wall is clear of bone for at
#: least this long (mm).
CLEAR_ABOVE_MM = 14.0
MIN_CLEAR_MM = 2.0


@dataclasses.dataclass
class Dens:
    """C2's dens and C1's anterior arch, in planes of the straightened spine.

    ``body`` is the index (in ``bodies``) of the run holding C2's body; ``base``..``tip`` the
    planes of the dens above it; ``arch`` the planes where C1's anterior arch was seen;
    ``centre_v`` and ``radius`` the dens' centre (v offset from the canal, voxels) and radius
    (voxels) where it was measured.
    """

    body: int
    base: int
    tip: int
    arch: tuple[int, int]
    centre_v: float
    radius: float


def arch_in_front(prof: np.ndarray, start: int, bone_hu: float, sp: float
                  ) -> tuple[int, int, int] | None:
    """Whether a midline profile shows a dens, a narrow gap and an arch in front of it.

    ``prof`` is HU along the midline from the canal's centre forwards (one voxel a step);
    ``start`` the step of the canal's front wall.  Returns the steps of the dens' back, the
    gap and the arch's front, or ``None``.
    """
    mm = lambda x: int(round(x / sp))  # noqa: E731
    bone = prof > bone_hu
    first = np.flatnonzero(bone[: start + mm(4.0) + 1])
    if first.size == 0:
        return None
    back = int(first[0])
    # the bone in front of the canal, as one stretch up to the first run of soft tissue
    # SOFT_IN_FRONT_MM long (dark marrow and the atlanto-dental interval are shorter)
    end, soft = back, mm(SOFT_IN_FRONT_MM)
    i = back + 1
    while i < len(prof) and i - end <= soft:
        if bone[i]:
            end = i
        i += 1
    if i - end <= soft:
        return None  # the profile ends before soft tissue is seen in front of the bone
    # the most anterior narrow, deep dip with a thin bar in front of it
    for gap in range(end - mm(ARCH_DEPTH_MM[0]), end - mm(ARCH_DEPTH_MM[1]) - 1, -1):
        if gap <= back or not (prof[gap] <= prof[gap - 1] and prof[gap] <= prof[gap + 1]):
            continue
        m_arch = float(prof[gap + 1: end + 1].max())
        m_dens = float(prof[back: gap].max())
        level = GAP_FRACTION * min(m_arch, m_dens)
        if prof[gap] >= level:
            continue
        lo = gap
        while lo - 1 > back and prof[lo - 1] < level:
            lo -= 1
        hi = gap
        while hi + 1 < end and prof[hi + 1] < level:
            hi += 1
        if (hi - lo + 1) * sp > MAX_GAP_MM:
            continue
        dens = (lo - back) * sp
        arch = (end - hi) * sp
        if DENS_DEPTH_MM[0] <= dens <= DENS_DEPTH_MM[1] and ARCH_DEPTH_MM[0] <= arch <= ARCH_DEPTH_MM[1]:
            return back, gap, end
    return None


def _width(row: np.ndarray, i: int, sp: float) -> float:
    """The width (mm) of the bone through ``row[i]``: out from ``i`` on each side to where
    the profile first falls under :data:`GAP_FRACTION` of the brightest seen on the way (the
    outer edge of the cortex; darker marrow inside it does not stop the walk)."""
    row = np.nan_to_num(row, nan=-1000.0)
    reach = int(round(MAX_DENS_WIDTH_MM / sp))
    half = []
    for step in (-1, 1):
        top, p = row[i], i
        while abs(p - i) <= reach:
            q = p + step
            if q < 0 or q >= len(row):
                break
            top = max(top, row[q])
            if row[q] < GAP_FRACTION * top:
                break
            p = q
        half.append(abs(p - i))
    return (half[0] + half[1] + 1) * sp


def find_dens(planes: np.ndarray, uu: np.ndarray, vv: np.ndarray, column, bodies: list[BodyRun],
              sp: float) -> Dens | None:
    """C1's anterior arch in front of C2's dens at the top of the column, or ``None``.

    ``planes``, ``uu``, ``vv`` are the straightened spine (:func:`.column.reformat`),
    ``column`` its outline (:class:`.column.Column`).  A stack of planes showing the arch
    (:func:`arch_in_front`) at least :data:`MIN_ARCH_MM` long is C1's when, going up:

    * a body run (C2's) starts below it, and bone stands against the canal's front wall in
      every plane from that body up to the arch (the dens rises from the body: no disc, no
      gap);
    * within :data:`CLEAR_ABOVE_MM` above the arch, the canal's front wall is clear of bone
      for at least :data:`MIN_CLEAR_MM` (above the dens' tip and below the basion, the
      anterior rim of the foramen magnum: the basion-dens interval is 4-12 mm in adults).

    The lowest such stack is taken: the skull's base above can show a similar pattern
    (the two tables of a bone plate), never below a clear gap from the column.
    """
    if not bodies:
        return None
    mm = lambda x: int(round(x / sp))  # noqa: E731
    u0 = int(np.argmin(np.abs(uu)))
    v0 = int(np.argmin(np.abs(vv)))
    half = max(1, mm(1.0))
    n = planes.shape[0]
    near = np.zeros(n, bool)  # bone against the canal's front wall
    seen = np.zeros(n, bool)
    hits: list[tuple[int, int, int, int]] = []
    for s in range(bodies[0].start, n):
        cu = column.centre_u[s]
        i = u0 + int(round(cu)) if np.isfinite(cu) else u0
        strip = planes[s, max(0, i - half): i + half + 1, max(0, v0 - mm(REACH_MM)): v0 + 1]
        if not np.isfinite(strip).all():
            continue
        seen[s] = True
        prof = strip.mean(axis=0)[::-1]  # from the canal's centre forwards
        front = column.canal_front[s]
        start = int(round(-front)) if np.isfinite(front) else mm(8.0)
        near[s] = bool((prof[: start + mm(4.0) + 1] > column.threshold).any())
        bone_hu = max(column.threshold, MIN_BONE_HU)
        found = arch_in_front(prof, start, bone_hu, sp)
        if found is not None:
            # the peg must be a dens, not a body: narrow from side to side as well
            row = planes[s, :, v0 - int(round((found[0] + found[1]) / 2.0))]
            if _width(row, i, sp) <= MAX_DENS_WIDTH_MM:
                hits.append((s,) + found)
    if not hits:
        return None
    # stacks of consecutive planes (one missed plane bridged)
    stacks: list[list[tuple[int, int, int, int]]] = [[hits[0]]]
    for h in hits[1:]:
        if h[0] - stacks[-1][-1][0] <= 2:
            stacks[-1].append(h)
        else:
            stacks.append([h])
    for stack in stacks:
        a0, a1 = stack[0][0], stack[-1][0]
        if (a1 - a0 + 1) * sp < MIN_ARCH_MM:
            continue
        base = a0 - mm(DENS_BELOW_ARCH_MM)
        tip = a1 + mm(TIP_ABOVE_ARCH_MM)
        # C2's body is the highest run below the dens from which body and dens together are
        # as tall as a C2; shorter runs above it are pieces of the dens (its base narrows,
        # which can pass for a disc).
        below = [k for k, b in enumerate(bodies) if b.start < base]
        if not below:
            continue
        # C2's body is the highest run from whose lower endplate to the dens' tip is as tall
        # as a C2; runs above it are pieces of the dens (its narrowing base can pass for a
        # disc), the run below it is C3, a level taller.
        fits = [k for k in below if C2_HEIGHT_MM[0] <= (tip - bodies[k].start) * sp <= C2_HEIGHT_MM[1]]
        if not fits:
            continue
        k = fits[-1]
        rise = range(max(bodies[k].start, a0 - mm(MAX_BODY_TO_ARCH_MM + DENS_BELOW_ARCH_MM)), a0)
        if not all(near[s] for s in rise):
            continue
        longest = run = 0
        for s in range(a1 + 1, min(n, a1 + 1 + mm(CLEAR_ABOVE_MM))):
            if not seen[s]:
                break  # the view ends: what is above is unseen
            run = 0 if near[s] else run + 1
            longest = max(longest, run)
        if longest * sp < MIN_CLEAR_MM:
            continue
        depth = float(np.median([h[2] - h[1] for h in stack]))
        centre = float(np.median([-(h[1] + h[2]) / 2.0 for h in stack]))
        return Dens(body=k, base=base, tip=tip, arch=(a0, a1),
                    centre_v=centre, radius=depth / 2.0)
    return None

