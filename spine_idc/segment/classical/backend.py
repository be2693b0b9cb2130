"""The classical (weights-free, CPU) vertebra segmenter.

Steps (each module explains its own reasoning):

1. resample the CT onto an LPS-aligned isotropic grid around the patient (:mod:`.grid`), so
   that axis 2 is always the body axis whatever the patient position or stored axis order;
2. find the spinal canal on a coarse copy of that grid, from a likelihood that needs no closed
   bony ring, linked slice to slice; a scan without one has no spine (:mod:`.canal`);
3. crop to the spine, pick a surface threshold from the image's own cortical bone, build bone
   masks with the marrow that cortical shells enclose (:mod:`.bone`);
4. straighten the spine along the canal, outline the column of bodies in front of it from
   the intensities (:mod:`.column`), and find the discs as the rhythmic departures of the
   column's HU from its bodies' plateau (:mod:`.discs`);
5. seed and grow whole vertebrae, taking ribs and other bones away (:mod:`.grow`);
6. name the vertebrae from anatomical anchors -- sacrum, lowest and highest rib-bearing
   vertebra, the dens of C2 (:mod:`.dens`) -- or leave them unidentified and say so, map the labels back onto the CT's own
   grid (nearest neighbour through the affines) and assemble the QC record (:mod:`.levels`).

Over 400 lines: the steps' order, the retry for a faint spine and the three helpers that
adjust the bodies between steps (the probe below the lowest disc, the top at the dens, the
canal's core) are the segmenter's control flow, kept in one place.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
from scipy import ndimage

from ...errors import ConfigError, SegmentationError
from ...volume import Volume
from .. import grid
from .axis import extend_straight, make_centreline
from .bone import peel_skirt
from ..base import Declaration, Resources, SegmentationResult
from .canal import CanalTrack, find_canal
from .column import measure_column, reformat
from .dens import find_dens
from .disc_extent import between_bodies, bodies_between, edge_discs, refine_discs
from .discs import choose_discs, disc_evidence, local_period
from .grow import grow_vertebrae
from .softparts import discs_and_canal
from .vertebrae import BodyRun, Straightened
from .work import Work

log = logging.getLogger(__name__)

VERSION = "0.1.0"
#: Smoothing of the canal centreline and of its planes' orientation (mm of arc length; see
#: :func:`.axis.make_centreline`: the planes must not rock once per vertebra).
LINE_SMOOTH_MM = 10.0
FRAME_SMOOTH_MM = 20.0


#: Grid spacing (mm) the canal is looked for on: fine enough for a 10 mm canal, coarse enough
#: to score a whole-body CT in about a second.
CANAL_GRID_MM = 2.0
#: The stricter bone threshold: at least this far above the bone threshold, and this high
#: where the cortex allows (half the brightness of a 2 mm cortex blurred with soft tissue).
JOINT_ABOVE_BONE_HU = 60.0
JOINT_HU = 250.0
#: Vertebral bodies are marrow inside a thin shell: the median HU of the column's core is
#: that of trabecular bone (about 100-300 HU in adults, higher in sclerosis but not along
#: the whole column).  Above this the 'column' is solid cortical bone (a skull, a plate).
MAX_MARROW_HU = 600.0
#: A column of "bodies" with a stretch this long (mm) and this large a share of the column
#: with no disc in it is not a spine: no vertebral body is taller than about 50 mm, so even
#: two discs missed in a row leave stretches under 100 mm.  A contrast-filled aorta behind
#: which the dark gap passed for a canal (on 3 mm slices through an osteoporotic spine,
#: whose walls are faint) gave 148 mm of its 214 mm.
MAX_DISCLESS_MM = 100.0
MAX_DISCLESS_SHARE = 0.5
#: The same for the lowest stretch, which may be the sacrum and coccyx (100-130 mm) not yet
#: cut at its fused discs.
MAX_SACRUM_RUN_MM = 140.0
#: The shortest canal (mm along the body axis) that counts as a spine.
MIN_CANAL_MM = 20.0
#: How far (mm) below the canal's lowest point the working grid reaches.
BELOW_CANAL_MM = 120.0


@dataclasses.dataclass(frozen=True)
class ClassicalOptions:
    """The classical backend's ``segment`` keys: ``spacing_mm``, its isotropic working resolution."""

    spacing_mm: float = 1.0


class ClassicalBackend:
    """Weights-free vertebra segmentation on the CPU.

    Parameters
    ----------
    spacing_mm:
        Isotropic working resolution (the ``segment.spacing_mm`` configuration key).
    cortical_hu:
        Half the brightness of the spine's cortical bone, which caps what a disc may look
        like; ``None`` derives it from the image: 0.55 x the 99th percentile of bone-bright
        voxels around the canal, within 200-600 HU.

    Every other threshold comes from the scan itself (see :mod:`.column` and :meth:`grow`).

    Raises
    ------
    ConfigError
        For a spacing outside 0.3-3 mm.
    """

    name = "classical"
    version = VERSION
    #: One CPU thread; 8 GB holds a whole-body CT and its working copies.
    declaration = Declaration(name, VERSION, ClassicalOptions, Resources(mem_mb=8000))

    def __init__(self, spacing_mm: float = 1.0, cortical_hu: float | None = None):
        if not 0.3 <= float(spacing_mm) <= 3.0:
            raise ConfigError(f"segment.spacing_mm must be within 0.3-3 mm, got {spacing_mm}")
        self.spacing = float(spacing_mm)
        self.cortical_hu = None if cortical_hu is None else float(cortical_hu)

    # -- public ---------------------------------------------------------------------------
    def segment(self, ct: Volume, *, series_key: str) -> SegmentationResult:
        """Segment and name the vertebrae of ``ct``; see :class:`~.base.Backend`."""
        from .levels import finish

        t0 = time.perf_counter()
        work = None
        try:
            work = self.prepare(ct, series_key)
            self.split(work, series_key)
        except SegmentationError as first:
            canal = getattr(first, "canal", None)
            if canal is None and work is not None:
                canal = work.coarse_track
            if first.reason != "no-spine" or canal is None:
                raise
            # The canal found had no spine in front of it (a pocket of fat between muscles
            # can look more like a canal than the canal of a faint, osteoporotic spine):
            # look once more, away from it, for fainter walls.
            log.info("series %s: %s; looking again for a canal with fainter walls",
                     series_key, first.detail)
            try:
                work = self.prepare(ct, series_key, avoid=canal)
                self.split(work, series_key)
            except SegmentationError as second:
                if second.reason != "no-spine":
                    raise
                raise first from None
            work.notes.append(f"the first canal found had no spine in front of it "
                              f"({first.detail}); this one was found looking again for "
                              "fainter walls")
        result = finish(work, ct, series_key, self)
        result.qc.timing_s["total"] = round(time.perf_counter() - t0, 3)
        log.info(
            "series %s: %d vertebrae (%s) in %.1f s", series_key, len(result.qc.levels),
            ",".join(result.qc.levels), result.qc.timing_s["total"],
        )
        return result

    # -- steps ----------------------------------------------------------------------------
    def prepare(self, ct: Volume, series_key: str, avoid: CanalTrack | None = None) -> Work:
        """Working grid, canal, spine crop.

        ``avoid``: a canal found on an earlier try that had no spine in front of it (see
        :func:`.canal.find_canal`).  A failure to find a canal carries the canal that was
        found, too short, as ``canal``.
        """
        sp = self.spacing
        timing: dict[str, float] = {}
        t = time.perf_counter()
        arr = ct.array
        if arr.ndim != 3 or min(arr.shape) < 2:
            raise SegmentationError(
                series_key, "no-spine", f"volume of shape {arr.shape} is not 3-D"
            )
        lo, hi = _patient_box(ct)
        if lo is None:
            raise SegmentationError(
                series_key, "no-spine", "the volume holds no patient (nothing above -500 HU)"
            )
        src_lps = grid.lps_affine(ct)
        coarse, coarse_aff = grid.to_working_grid(ct, CANAL_GRID_MM, lo, hi)
        coarse_inside = grid.inside_source_mask(arr.shape, src_lps, coarse.shape, coarse_aff)
        timing["resample"] = time.perf_counter() - t

        t = time.perf_counter()
        coarse_track = find_canal(coarse, CANAL_GRID_MM, coarse_inside, avoid=avoid)
        timing["canal"] = time.perf_counter() - t
        extent = (
            (coarse_track.k[-1] - coarse_track.k[0]) * CANAL_GRID_MM if len(coarse_track) else 0.0
        )
        if extent < MIN_CANAL_MM:
            err = SegmentationError(
                series_key, "no-spine",
                f"no spinal canal found over at least {MIN_CANAL_MM:.0f} mm (a dark canal with "
                "a vertebral body in front and bone beside or behind it)",
                hint="the series may not show the spine (head, extremity) or be too thin-sliced",
            )
            err.canal = coarse_track
            raise err
        # The fine grid covers the spine only: wide enough for transverse processes, rib
        # necks and the sacrum's alae, deep enough for the bodies in front and spinous
        # processes behind, and beyond the canal's ends: 60 mm above (a top vertebra whose
        # canal was not followed), BELOW_CANAL_MM below (the canal is rarely followed past
        # S1, and the sacrum and coccyx reach a good 10 cm further down).
        t = time.perf_counter()
        pts_lps = (coarse_aff @ np.c_[coarse_track.points(), np.ones(len(coarse_track))].T).T[:, :3]
        box_lo = np.maximum(pts_lps.min(axis=0) - np.array([85.0, 100.0, BELOW_CANAL_MM]), lo)
        box_hi = np.minimum(pts_lps.max(axis=0) + np.array([85.0, 85.0, 60.0]), hi)
        hu, aff = grid.to_working_grid(ct, sp, box_lo, box_hi)
        inv = np.linalg.inv(aff)
        fine = (inv @ np.c_[pts_lps, np.ones(len(pts_lps))].T).T[:, :3]
        track = CanalTrack(k=fine[:, 2], x=fine[:, 0], y=fine[:, 1], score=coarse_track.score)
        work = Work(hu=hu, affine=aff, spacing=sp, track=track, timing=timing,
                    coarse_track=coarse_track)
        work.inside = grid.inside_source_mask(arr.shape, src_lps, hu.shape, aff)
        timing["resample"] += time.perf_counter() - t

        work.cortical_hu = (
            float(self.cortical_hu) if self.cortical_hu is not None else _cortical_threshold(work)
        )
        work.canal_core = _canal_core(track, hu.shape, sp)
        return work

    def split(self, work: Work, series_key: str) -> None:
        """Centreline, column and discs, bodies, whole vertebrae."""
        self.find_bodies(work, series_key)
        self.grow(work)

    def find_bodies(self, work: Work, series_key: str) -> None:
        """Centreline, the column of bodies in front of the canal, its discs and bodies."""
        sp = work.spacing
        t = time.perf_counter()
        line = make_centreline(work.track.points(), 1.0, smooth=LINE_SMOOTH_MM / sp,
                               frame_smooth=FRAME_SMOOTH_MM / sp)
        line = extend_straight(line, work.hu.shape, 60.0 / sp, FRAME_SMOOTH_MM)
        work.line = line
        planes, uu, vv = reformat(work.hu, line, sp, work.inside)
        col = measure_column(planes, uu, vv, sp)
        work.column = col
        seen = np.flatnonzero(col.found)
        if seen.size < max(2, int(8.0 / sp)):
            raise SegmentationError(
                series_key, "no-spine", "a canal-like tube was found but no vertebral bodies "
                "in front of it"
            )
        lo, hi = int(seen[0]), int(seen[-1])
        work.seen = (lo, hi)
        core_hu = float(np.nanmedian(col.profile[lo: hi + 1]))
        if core_hu > MAX_MARROW_HU:
            raise SegmentationError(
                series_key, "no-spine", f"the column in front of the canal-like tube is solid "
                f"bone ({core_hu:.0f} HU at its core), not vertebral bodies with marrow"
            )
        # Two passes: the rhythm of a first evidence sets how far a disc's endplates may lie
        # from its centre in the second.
        first = disc_evidence(col.profile, sp)
        period = local_period(first, sp, lo=lo, hi=hi, width=2.0 * col.half_width)
        work.disc_evidence = disc_evidence(col.profile, sp, period)
        centres = choose_discs(work.disc_evidence, sp, 2.0 * col.half_width, lo=lo, hi=hi)
        discs = refine_discs(col.profile, work.disc_evidence, centres, sp, period)
        work.found_discs = between_bodies(edge_discs(col.profile, discs, sp), col.profile,
                                          col.threshold, sp)
        work.planes = Straightened(
            body_u=col.centre_u, body_v=col.centre_v, width=2.0 * col.half_width,
            depth=2.0 * col.half_depth, profile=col.profile, found=col.found,
        )
        work.canal_r = float(np.nanmedian(-col.canal_front))
        work.canal_hw = float(np.nanmedian(col.canal_half_width))
        work.bodies = bodies_between(work.found_discs, lo, hi, work.planes, sp, col.threshold)
        # The lowest run may be a sacrum not yet cut at its fused discs (100-120 mm with the
        # coccyx, more than half of a pelvic scan's column): it has a longer allowance.
        column_mm = (hi - lo + 1) * sp
        runs = [(b.stop - b.start) * sp for b in work.bodies]
        limits = [MAX_SACRUM_RUN_MM] + [MAX_DISCLESS_MM] * (len(runs) - 1)
        over = [r for r, lim in zip(runs, limits)
                if r > lim and r > MAX_DISCLESS_SHARE * column_mm]
        if over:
            raise SegmentationError(
                series_key, "no-spine", f"the column in front of the canal-like tube runs "
                f"{max(over):.0f} mm of its {column_mm:.0f} mm without a disc: not vertebral "
                "bodies (a vessel?)"
            )
        work.dens = find_dens(planes, uu, vv, col, work.bodies, sp)
        if work.dens is not None:
            _top_at_dens(work)
        _probe_below(work)
        if not work.bodies:
            raise SegmentationError(
                series_key, "no-spine", "a canal-like tube was found but no vertebral bodies"
            )
        work.timing["column"] = time.perf_counter() - t

    def grow(self, work: Work) -> None:
        """Bone masks for the vertebrae, and the vertebrae grown from their bodies.

        Two thresholds, both from the scan: ``bone_hu`` (the column's own, halfway between
        soft tissue and the bodies' HU) takes all of each vertebra, faint arches of thick
        slices included; ``joint_hu``, higher, leaves gaps at the blurred joints between a rib
        and its vertebra, which the flood of the vertebrae must not cross.
        """
        sp, col = work.spacing, work.column
        t = time.perf_counter()
        floors = [
            float(np.nanmin(col.profile[int(d.centre - d.half): int(d.centre + d.half) + 1]))
            for d in work.found_discs
            if np.isfinite(col.profile[int(d.centre - d.half): int(d.centre + d.half) + 1]).any()
        ]
        floors = [f for f in floors if f < work.cortical_hu - 30.0]
        work.disc_hu = float(np.percentile(floors, 75)) if floors else float("-inf")
        work.bone_hu = col.threshold
        work.joint_hu = float(max(col.threshold + JOINT_ABOVE_BONE_HU,
                                  min(work.cortical_hu, JOINT_HU)))
        smooth = ndimage.gaussian_filter(work.hu, 0.7 / sp)
        usable = work.inside & ~work.canal_core
        work.full = peel_skirt((smooth > work.bone_hu) & usable, smooth, work.bone_hu)
        work.strict = (smooth > work.joint_hu) & usable
        work.timing["bone"] = time.perf_counter() - t
        t = time.perf_counter()
        grow_vertebrae(work)
        if work.dens is not None:  # C1: a vertebra without a body, over the dens' planes
            c2 = work.bodies[-1]
            work.bodies.append(BodyRun(c2.stop + 1, work.dens.tip, c2.width, c2.depth))
            work.atlas = True
        work.timing["grow"] = time.perf_counter() - t
        t = time.perf_counter()
        work.disc_labels, work.canal = discs_and_canal(work)
        work.timing["discs_canal"] = time.perf_counter() - t


def _top_at_dens(work: Work) -> None:
    """The column ends at C2's dens (:mod:`.dens`): C2's body is the top body, and what was
    taken for bodies and discs above it (the dens with C1's ring, the skull's base) is not."""
    d = work.dens
    c2 = work.bodies[d.body]
    work.bodies = work.bodies[: d.body] + [
        BodyRun(c2.start, min(c2.stop, d.base - 1), c2.width, c2.depth)
    ]
    work.found_discs = [x for x in work.found_discs if x.centre < work.bodies[-1].stop]
    work.seen = (work.seen[0], d.tip)
    work.notes.append(
        f"C1's anterior arch stands in front of the dens of the top body over "
        f"{(d.arch[1] - d.arch[0] + 1) * work.spacing:.0f} mm: that body is C2, the ring around "
        "the dens C1, the bone above the skull's base"
    )


#: Below the lowest disc, the column is followed this far (mm) to look for the sacrum when the
#: straightened view loses it (the sacrum curves backwards, away from a straight extension).
PROBE_MM = 30.0


def _probe_below(work: Work) -> None:
    """Add a tentative segment under the lowest disc when the column's view ends there.

    The canal is rarely followed far into the sacrum (its canal is a flat slit), so the
    column is often seen only down to the L5/S1 disc.  The top of S1, where the alae and
    the sacroiliac joints are, lies just under that disc, within the last outline seen: a
    segment of :data:`PROBE_MM` there lets the sacrum's test (:mod:`.sacrum`) look at it.  If
    it is not the sacrum it is dropped again (:func:`.grow.grow_vertebrae`).
    """
    if not work.found_discs or not work.bodies:
        return
    sp = work.spacing
    lowest = min(work.found_discs, key=lambda d: d.centre)
    lo = work.seen[0]
    top = int(np.floor(lowest.centre - lowest.half)) - 1
    if lowest.centre - lo > 20.0 / sp or top < 10.0 / sp:
        return  # the column goes on well below the disc, or the view ends there
    start = max(0, int(round(top - PROBE_MM / sp)))
    ref = min(work.bodies, key=lambda b: b.start)
    probe = BodyRun(start, top, ref.width, ref.depth)
    work.probe_replaced = [b for b in work.bodies if b.start <= lowest.centre]
    work.bodies = [b for b in work.bodies if b.start > lowest.centre]
    work.bodies.insert(0, probe)
    work.probe = True


def _patient_box(ct: Volume):
    """LPS box around the patient (voxels above -500 HU, largest blob), or (None, None)."""
    arr = ct.array
    step = [max(1, int(round(4.0 / s))) for s in ct.spacing]
    small = arr[:: step[0], :: step[1], :: step[2]] > -500
    if not small.any():
        return None, None
    lab, n = ndimage.label(small)
    if n > 1:
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        # Keep every blob at least a tenth of the largest: the patient may be split by the
        # field of view, the table is thin and small.
        keep = sizes >= 0.1 * sizes.max()
        small = keep[lab]
    idx = np.argwhere(small)
    lo = idx.min(axis=0) * step - np.array(step)
    hi = idx.max(axis=0) * step + np.array(step)
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, np.array(arr.shape) - 1)
    return grid.bounding_box_lps(arr.shape, grid.lps_affine(ct), lo, hi)


def _canal_core(track: CanalTrack, shape, sp: float) -> np.ndarray:
    """A tube of radius 2.5 mm along the tracked canal, interpolated across discs.

    Only the planes the track spans are marked: beyond them the canal's position is a guess.
    """
    core = np.zeros(shape, bool)
    ks = np.arange(int(track.k.min()), int(track.k.max()) + 1)
    xs = np.interp(ks, track.k, track.x)
    ys = np.interp(ks, track.k, track.y)
    r = max(1, int(round(2.5 / sp)))
    dx, dy = np.mgrid[-r: r + 1, -r: r + 1]
    disk = dx**2 + dy**2 <= r * r
    dx, dy = dx[disk], dy[disk]
    for k, x, y in zip(ks, np.rint(xs).astype(int), np.rint(ys).astype(int)):
        px, py = x + dx, y + dy
        ok = (px >= 0) & (px < shape[0]) & (py >= 0) & (py < shape[1])
        core[px[ok], py[ok], k] = True
    return core


def _cortical_threshold(work: Work) -> float:
    """0.55 x the 99th percentile of bone-bright (> 200 HU) voxels in boxes around the canal,
    within 200-600 HU: about half the brightness of the spine's cortical bone."""
    tr, hu, sp = work.track, work.hu, work.spacing
    r = int(round(40 / sp))
    vals = []
    for k in np.linspace(0, len(tr) - 1, min(len(tr), 40)).astype(int):
        x, y, z = int(tr.x[k]), int(tr.y[k]), int(tr.k[k])
        block = hu[max(0, x - r): x + r, max(0, y - r - r // 2): y + r, z]
        v = block[block > 200]
        if v.size:
            vals.append(v)
    if not vals:
        return 250.0
    peak = float(np.percentile(np.concatenate(vals), 99))
    return float(np.clip(0.55 * peak, 200.0, 600.0))
