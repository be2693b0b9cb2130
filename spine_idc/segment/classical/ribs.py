"""Which vertebrae bear ribs, side by side, and where the view is too narrow to tell.

Ribs are the most reliable landmark of the spine's levels on CT: T1 bears the first pair and
T12 the last, and VerSe's counting rule (Sekuboyina et al., *VerSe: a vertebrae labelling and
segmentation benchmark*, Med. Image Anal. 2021) names L1 the first vertebra *without ribs or
with rib remnants under 4 cm*.  So a rib here is a bone that

* is not the vertebra's own (the bone the segmenter handed to "other"),
* touches the vertebra (within :data:`CONTACT_MM`) where a rib articulates: its head beside
  the back third of the body, or its tubercle on the transverse process, less than
  :data:`MEDIAL_MAX_MM` from the midline and :data:`BACK_MAX_MM` behind the canal's centre
  (vessels, a crus, a contrast-filled kidney touch the body further forward),
* runs at least :data:`MIN_RIB_MM` from that contact (rib remnants and transverse processes
  cut off by the segmentation are shorter), and
* is slender: a rib's cross-section is a few square centimetres at most, so bone that is
  much more massive per millimetre of its length (an iliac crest next to L5) is not a rib.

Every vertebra is looked at on its own, in a slab of planes perpendicular to the canal that
reaches from :data:`BELOW_MM` under its body (ribs slope downwards as they run out) to
:data:`ABOVE_MM` over it, wide enough for a rib's first decimetre.  A side whose slab is
mostly outside the CT's field of view is ``unknown``, never ``none``: calling a vertebra
rib-free because its ribs were cut off would shift every name by one.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from .axis import sample_planes
from .column import METAL_MIN_HU

if TYPE_CHECKING:  # pragma: no cover
    from .work import Work

log = logging.getLogger(__name__)

#: Metal within this distance (mm) of the midline is metal in the spine (see find_ribs).
METAL_REACH_MM = 30.0
#: How close (mm) a bone must come to the vertebra to articulate with it.
CONTACT_MM = 6.5
#: The loose test for "no rib here": touching within this distance (mm), in zones widened by
#: LOOSE_EXTRA_MM, running at least LOOSE_RIB_MM.
LOOSE_CONTACT_MM = 9.0
LOOSE_EXTRA_MM = 6.0
LOOSE_RIB_MM = 25.0
#: Where a rib may touch its vertebra: within this distance (mm) of the midline ...
MEDIAL_MAX_MM = 46.0
#: ... no further back (mm) than this behind the canal's centre (the costotransverse joints),
#: and no further forward than the back third of the body (its costal facets; in front of
#: them only vessels, a crus or a contrast-filled kidney's hilum touch it).
BACK_MAX_MM = 20.0
#: A rib runs at least this far (mm) from its joint (VerSe: remnants under 4 cm do not count).
MIN_RIB_MM = 40.0
#: How far from its joint (mm) a rib's run and slenderness are judged.
LOCAL_MM = 60.0
#: Bone more massive than this per millimetre of its run (mm^3/mm, i.e. a cross-section in
#: mm^2) is not a rib: an adult rib is about 1 x 1.5 cm, with partial volume well under 4 cm^2.
MAX_RIB_SECTION_MM2 = 400.0
#: The slab a vertebra's ribs are looked for in: below and above its body (mm), out to the
#: sides (mm) and from in front of the body to behind the arch (mm).
BELOW_MM = 30.0
ABOVE_MM = 8.0
HALF_WIDTH_MM = 100.0
V_RANGE_MM = (-75.0, 45.0)
#: Sampling of the slabs (mm).
SLAB_MM = 2.0
#: A side whose first 70 mm out from the midline is less than this fraction inside the
#: CT's field of view is ``unknown``.
MIN_VISIBLE = 0.8


class RibState(str, enum.Enum):
    """What one side of one vertebra shows."""

    RIB = "rib"
    NONE = "none"
    UNKNOWN = "unknown"


@dataclasses.dataclass
class RibSides:
    """Both sides of one vertebra: state and the longest rib's run (mm) on each side."""

    left: RibState
    right: RibState
    left_mm: float = 0.0
    right_mm: float = 0.0

    @property
    def count(self) -> int:
        """Sides on which a rib was seen."""
        return int(self.left is RibState.RIB) + int(self.right is RibState.RIB)

    @property
    def both(self) -> bool:
        return self.left is RibState.RIB and self.right is RibState.RIB

    @property
    def free(self) -> bool:
        """Seen on both sides, with no rib on either."""
        return self.left is RibState.NONE and self.right is RibState.NONE

    @property
    def known(self) -> bool:
        return RibState.UNKNOWN not in (self.left, self.right)


def find_ribs(work: "Work") -> list[RibSides]:
    """Per vertebra (internal order, caudal to cranial), what each side shows."""
    sp = work.spacing
    out = []
    other = work.other.astype(np.float32)
    metal = work.hu > METAL_MIN_HU
    metal = metal.astype(np.float32) if metal.any() else None
    inside = work.inside.astype(np.float32)
    n_planes = len(work.line)
    half_u = HALF_WIDTH_MM / sp
    v_lo, v_hi = (v / sp for v in V_RANGE_MM)
    # Slabs are sampled every SLAB_MM: ribs are 8-15 mm thick, joints a few mm apart.
    res = SLAB_MM / sp
    labels = work.labels.astype(np.float32)
    for k, b in enumerate(work.bodies):
        if work.sacrum and k == 0:
            out.append(RibSides(RibState.NONE, RibState.NONE))
            continue
        s0 = max(0, int(b.start - BELOW_MM / sp))
        s1 = min(n_planes - 1, int(b.stop + ABOVE_MM / sp))
        idx = np.arange(s0, s1 + 1, max(1, int(round(res))))
        kw = dict(res=res, order=0, idx=idx)
        if metal is not None:
            # Streaks from metal in the spine (pedicle screws, a rod) run out as slender and
            # bright as ribs, and the screws' heads stick out behind the transverse
            # processes: beside metal, ribs are not judged.  (Only metal within
            # METAL_REACH_MM of the midline: dense contrast in a renal pelvis is not metal
            # in the spine.)
            slab_metal = sample_planes(metal, work.line, half_u, (v_lo, v_hi), **kw) > 0.5
            near = np.abs(np.arange(slab_metal.shape[1]) * res - half_u) * sp <= METAL_REACH_MM
            if slab_metal[:, near].any():
                out.append(RibSides(RibState.UNKNOWN, RibState.UNKNOWN))
                continue
        slab_other = sample_planes(other, work.line, half_u, (v_lo, v_hi), **kw) > 0.5
        slab_labels = sample_planes(labels, work.line, half_u, (v_lo, v_hi), **kw)
        slab_self = slab_labels == k + 1
        slab_others = (slab_labels > 0.5) & ~slab_self
        slab_in = sample_planes(inside, work.line, half_u, (v_lo, v_hi), **kw) > 0.5
        uu = np.arange(-half_u, half_u + 1e-9, res)[: slab_other.shape[1]] * sp
        vv = np.arange(v_lo, v_hi + 1e-9, res)[: slab_other.shape[2]] * sp
        c = int(round(b.centre))
        col = work.column
        back_third = (col.centre_v[c] + 0.3 * col.half_depth[c]) * sp
        strict = (
            (np.abs(uu)[:, None] <= MEDIAL_MAX_MM)
            & (vv[None, :] >= back_third) & (vv[None, :] <= BACK_MAX_MM)
        )
        loose = (
            (np.abs(uu)[:, None] <= MEDIAL_MAX_MM + LOOSE_EXTRA_MM)
            & (vv[None, :] >= back_third - LOOSE_EXTRA_MM)
            & (vv[None, :] <= BACK_MAX_MM + LOOSE_EXTRA_MM)
        )
        out.append(_sides(slab_other, slab_self, slab_others, slab_in, uu, strict, loose, SLAB_MM))
    return out


def _sides(other, own, others, inside, uu, strict, loose, sp) -> RibSides:
    """Rib states of one vertebra from its slab (``[plane, u, v]`` sampled every ``sp`` mm in
    each direction, ``uu`` the u offsets in mm; ``strict`` and ``loose`` the ``(u, v)`` zones
    where a rib may touch it).

    Two passes, as a hysteresis: a side bears a rib if one is clear under the strict test
    (touching within :data:`CONTACT_MM` in the joint zone, running :data:`MIN_RIB_MM`); it is
    free of ribs only if nothing like one shows even under a loose test (touching within
    :data:`LOOSE_CONTACT_MM` in a wider zone, running :data:`LOOSE_RIB_MM`); anything between
    is ``unknown``.  A rib anchor needs a clear rib next to a clear absence, so that a rib
    joint blurred a little differently cannot shift every name by one.  A piece that touches
    a neighbouring vertebra (``others``) more than this one is the neighbour's rib (a rib
    head sits between two bodies) and does not count here.
    """
    if not own.any():
        return RibSides(RibState.UNKNOWN, RibState.UNKNOWN)
    near = {
        d: ndimage.binary_dilation(own, iterations=max(1, int(round(d / sp))))
        for d in (CONTACT_MM, LOOSE_CONTACT_MM)
    }
    near_others = ndimage.binary_dilation(others, iterations=max(1, int(round(CONTACT_MM / sp))))
    states, lengths = [], []
    for sign in (1.0, -1.0):  # left (patient left = +u), then right
        side = (uu * sign > 0)[None, :, None]
        # Pieces on this side only: whatever bridges the two sides under the body (bone the
        # segmenter could not give to a vertebra) must not join the two ribs into one.
        lab, n = ndimage.label(other & side, structure=np.ones((3, 3, 3), bool))
        visible = inside[:, (uu * sign >= 0) & (uu * sign <= 70.0), :]
        if visible.mean() < MIN_VISIBLE:
            states.append(RibState.UNKNOWN)
            lengths.append(0.0)
            continue
        clear = _longest_rib(lab, n, near[CONTACT_MM] & other & side & strict[None],
                             near_others & other, uu, sign, sp)
        faint = _longest_rib(lab, n, near[LOOSE_CONTACT_MM] & other & side & loose[None],
                             near_others & other, uu, sign, sp)
        if clear >= MIN_RIB_MM:
            states.append(RibState.RIB)
        elif faint < LOOSE_RIB_MM:
            states.append(RibState.NONE)
        else:
            states.append(RibState.UNKNOWN)
        lengths.append(round(clear, 1))
    return RibSides(states[0], states[1], lengths[0], lengths[1])


def _longest_rib(lab, n, contact, contact_others, uu, sign, sp) -> float:
    """The longest run (mm) of a slender piece of ``lab`` touching at ``contact`` more than
    at ``contact_others``."""
    best = 0.0
    if not n or not contact.any():
        return best
    for c in np.unique(lab[contact]):
        if np.count_nonzero(contact_others & (lab == c)) > np.count_nonzero(contact & (lab == c)):
            continue
        pts = np.argwhere(lab == c).astype(float)
        touch = np.argwhere(contact & (lab == c)).astype(float)
        # Only the piece's first LOCAL_MM from where it touches the vertebra counts: a
        # first rib joins the clavicle and the manubrium further out, a lower rib the
        # costal cartilages; what matters is how it leaves the spine.
        d = np.linalg.norm(pts - touch.mean(axis=0)[None, :], axis=1) * sp
        keep = d <= LOCAL_MM
        run = float(d[keep].max())
        section = int(keep.sum()) * sp**3 / max(run, 1.0)
        if section > MAX_RIB_SECTION_MM2:
            continue
        best = max(best, run)
    return best
