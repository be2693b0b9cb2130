"""The classical (weights-free, CPU) vertebra segmenter.

Steps (each module explains its own reasoning):

1. resample the CT onto an LPS-aligned isotropic grid around the patient (:mod:`.grid`), so
   that axis 2 is always the body axis whatever the patient position or stored axis order;
2. find and track the spinal canal, which also decides whether there is a spine at all
   (:mod:`.axis`);
3. crop to the spine, pick a surface threshold from the image's own cortical bone, build bone
   masks with the marrow that cortical shells enclose (:mod:`.bone`);
4. straighten the spine along the canal, find bodies and discs from the filled-bone fraction
   at the body centre -- or, where shells are too faint, from HU dips -- (:mod:`.vertebrae`,
   :mod:`.discs`);
5. seed and grow whole vertebrae, taking ribs and other bones away (:mod:`.grow`);
6. name the vertebrae from anatomical anchors -- sacrum, lowest and highest rib-bearing
   vertebra -- or leave them unidentified and say so, map the labels back onto the CT's own
   grid (nearest neighbour through the affines) and assemble the QC record (:mod:`.levels`).
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
from scipy import ndimage

from ..errors import ConfigError, SegmentationError
from ..volume import Volume
from . import grid
from .axis import CanalTrack, Centreline, canal_candidates, make_centreline, track_canal
from .base import SegmentationResult
from .bone import bone_mask
from .discs import disc_brightness, hu_profile, split_at_dips, split_long
from .grow import grow_vertebrae
from .vertebrae import BodyRun, Straightened, analyse_planes, find_bodies

log = logging.getLogger(__name__)

VERSION = "0.1.0"
#: Smoothing of the canal centreline (mm of arc length).
LINE_SMOOTH_MM = 5.0


@dataclasses.dataclass
class Work:
    """Intermediate state of one run, kept together for the later steps and for debugging."""

    hu: np.ndarray  # working-grid HU (float32), cropped to the spine
    affine: np.ndarray  # voxel -> LPS of ``hu``
    spacing: float
    inside: np.ndarray | None = None  # voxels inside the CT's field of view
    canal_core: np.ndarray | None = None  # a thin tube along the tracked canal: never bone
    track: CanalTrack | None = None
    cortical_hu: float = 0.0
    dense: np.ndarray | None = None
    profile_mask: np.ndarray | None = None  # bone filled within shells at ``cortical_hu``
    filled: np.ndarray | None = None  # bone filled within shells at ``ring_hu``
    disc_hu: float = 0.0
    ring_hu: float = 0.0
    line: Centreline | None = None
    canal_r: float = 0.0
    canal_hw: float = 0.0
    planes: Straightened | None = None
    bodies: list[BodyRun] = dataclasses.field(default_factory=list)
    labels: np.ndarray | None = None  # vertebra index 1..n, caudal to cranial
    body_labels: np.ndarray | None = None
    other: np.ndarray | None = None  # bone handed to ribs / ilium / other
    lateral_mass: list[float] = dataclasses.field(default_factory=list)
    sacrum: bool = False  # bodies[0] is the sacrum
    conflict: bool = False  # naming anchors disagree
    notes: list[str] = dataclasses.field(default_factory=list)  # for the QC warnings
    hu_profile: np.ndarray | None = None  # median HU at the body centre per plane
    surface_hu: float = 0.0  # threshold the outer bone surface was drawn at
    discs: list = dataclasses.field(default_factory=list)  # DiscPlane between bodies k, k+1
    timing: dict[str, float] = dataclasses.field(default_factory=dict)


class ClassicalBackend:
    """Weights-free vertebra segmentation on the CPU.

    Parameters
    ----------
    spacing_mm:
        Isotropic working resolution (the ``segment.spacing_mm`` configuration key).
    cortical_hu:
        Threshold of the bone surface; ``None`` derives it from the image: 0.55 x the 99th
        percentile of bone-bright voxels around the canal, within 200-600 HU (half the
        cortical brightness is where a blurred edge lies).
    trabecular_hu:
        Regions enclosed by cortical shells whose mean HU exceeds this are marrow (the canal's
        CSF, cord and fat stay out).
    ring_hu:
        Lowest shell threshold used to close faint cortices; raised automatically above the
        brightness of the discs so that bodies never fuse through them.

    Raises
    ------
    ConfigError
        For a spacing outside 0.3-3 mm.
    """

    name = "classical"
    version = VERSION

    def __init__(
        self,
        spacing_mm: float = 1.0,
        cortical_hu: float | None = None,
        trabecular_hu: float = 65.0,
        ring_hu: float = 150.0,
    ):
        if not 0.3 <= float(spacing_mm) <= 3.0:
            raise ConfigError(f"segment.spacing_mm must be within 0.3-3 mm, got {spacing_mm}")
        self.spacing = float(spacing_mm)
        self.cortical_hu = None if cortical_hu is None else float(cortical_hu)
        self.trabecular_hu = float(trabecular_hu)
        self.ring_hu = float(ring_hu)

    # -- public ---------------------------------------------------------------------------
    def segment(self, ct: Volume, *, series_key: str) -> SegmentationResult:
        """Segment and name the vertebrae of ``ct``; see :class:`~.base.Backend`."""
        from .levels import finish

        t0 = time.perf_counter()
        work = self.prepare(ct, series_key)
        self.split(work, series_key)
        result = finish(work, ct, series_key, self)
        result.qc.timing_s["total"] = round(time.perf_counter() - t0, 3)
        log.info(
            "series %s: %d vertebrae (%s) in %.1f s", series_key, len(result.qc.levels),
            ",".join(result.qc.levels), result.qc.timing_s["total"],
        )
        return result

    # -- steps ----------------------------------------------------------------------------
    def prepare(self, ct: Volume, series_key: str) -> Work:
        """Working grid, canal, spine crop, bone masks."""
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
        hu, aff = grid.to_working_grid(ct, sp, lo, hi)
        timing["resample"] = time.perf_counter() - t

        t = time.perf_counter()
        sx, sy = _canal_search_box(hu, sp)
        track = track_canal(canal_candidates(hu[sx, sy], sp), sp)
        track.x += sx.start
        track.y += sy.start
        track.front += sy.start
        timing["canal"] = time.perf_counter() - t
        if len(track) * sp < 8.0 or (len(track) and (track.k[-1] - track.k[0]) * sp < 12.0):
            raise SegmentationError(
                series_key, "no-spine",
                "no spinal canal found (no CSF-density region enclosed by a vertebral arch over "
                "at least 12 mm)",
                hint="the series may not show the spine (head, extremity) or be too thin-sliced",
            )
        # Crop to the spine: wide enough for transverse processes, rib necks and the sacrum's
        # alae, deep enough for the bodies in front and spinous processes behind.
        x0 = int(max(0, np.floor(track.x.min() - 80 / sp)))
        x1 = int(min(hu.shape[0], np.ceil(track.x.max() + 80 / sp) + 1))
        y0 = int(max(0, np.floor(track.y.min() - 95 / sp)))
        y1 = int(min(hu.shape[1], np.ceil(track.y.max() + 80 / sp) + 1))
        hu = np.ascontiguousarray(hu[x0:x1, y0:y1])
        shift = np.array([x0, y0, 0.0])
        aff = aff.copy()
        aff[:3, 3] = aff[:3, 3] + aff[:3, :3] @ shift
        track = CanalTrack(
            track.k, track.x - x0, track.y - y0, track.area, track.ap_radius, track.front - y0
        )
        work = Work(hu=hu, affine=aff, spacing=sp, track=track, timing=timing)
        work.inside = grid.inside_source_mask(ct.array.shape, grid.lps_affine(ct), hu.shape, aff)

        t = time.perf_counter()
        work.cortical_hu = (
            float(self.cortical_hu) if self.cortical_hu is not None else _cortical_threshold(work)
        )
        # First mask: shells at the surface threshold itself.  Discs blurred by thick slices
        # can be brighter than a low threshold (two endplates a few mm apart), never than
        # this one, so this mask is what bodies and discs are told apart on.
        work.canal_core = _canal_core(track, hu.shape, sp)
        work.dense, work.profile_mask = bone_mask(
            hu, sp, ring_hu=work.cortical_hu, cortical_hu=work.cortical_hu,
            trabecular_hu=self.trabecular_hu, protect=work.canal_core,
        )
        work.profile_mask &= work.inside
        timing["bone"] = time.perf_counter() - t
        log.debug("series %s: cortical threshold %.0f HU", series_key, work.cortical_hu)
        return work

    def split(self, work: Work, series_key: str) -> None:
        """Centreline, bodies and discs, markers, ribs off, whole vertebrae."""
        sp = work.spacing
        t = time.perf_counter()
        tr = work.track
        work.canal_r = float(np.median(tr.ap_radius))
        work.canal_hw = float(np.median(tr.area / (np.pi * np.maximum(tr.ap_radius, 1.0))))
        pts = np.column_stack([tr.x, tr.y, tr.k])
        line = make_centreline(pts, 1.0, smooth=LINE_SMOOTH_MM / sp)
        line = _extend(line, work.hu.shape, 60.0 / sp)
        work.line = line
        hi = analyse_planes(work.profile_mask, line, work.canal_r, sp)
        hi_bodies = find_bodies(hi, sp)
        work.timing["planes"] = time.perf_counter() - t
        # Second mask, for the vertebrae themselves: a lower shell threshold closes faint
        # cortices (thin shells, thick slices) but must stay above what the discs look like,
        # or neighbouring bodies would fuse through them.  The brightest gap of the first
        # pass is a real disc (a false gap, where a shell broke, is marrow: darker).
        t = time.perf_counter()
        work.disc_hu = disc_brightness(work.hu, line, hi, hi_bodies, sp, work.cortical_hu)
        ring = float(np.clip(max(self.ring_hu, work.disc_hu + 60.0), None, work.cortical_hu))
        work.ring_hu = ring
        if ring < work.cortical_hu - 10.0:
            _, work.filled = bone_mask(
                work.hu, sp, ring_hu=ring, cortical_hu=work.cortical_hu,
                trabecular_hu=self.trabecular_hu, protect=work.canal_core,
            )
            work.filled &= work.inside
            lo = analyse_planes(work.filled, line, work.canal_r, sp)
        else:
            work.filled = work.profile_mask
            lo = hi
        lo_bodies = find_bodies(lo, sp) if lo is not hi else hi_bodies
        work.planes = lo
        covered = sum(b.length for b in hi_bodies) / max(1, sum(b.length for b in lo_bodies))
        if hi_bodies and covered >= 0.5:
            work.bodies = split_long(lo_bodies, hi_bodies, lo) if lo is not hi else hi_bodies
        else:
            # Shells too faint to close at the surface threshold (soft kernels, thick slices,
            # thin osteoporotic cortex).  The strict mask is unreliable here: bodies in it are
            # scattered bits of cortex.  So everything -- bodies, the rib race, the vertebra
            # floods -- runs on the fuller mask, whose surface is drawn lower, as faint as the
            # shells are, and peeled only once: the bone's own edge is no sharper than the
            # skirt around it.  Discs are where the HU along the body centre dips between the
            # bodies' marrow.
            work.surface_hu = float(max(ring + 50.0, 0.5 * work.cortical_hu))
            _, work.filled = bone_mask(
                work.hu, sp, ring_hu=ring, cortical_hu=work.surface_hu,
                trabecular_hu=self.trabecular_hu, protect=work.canal_core, peel_layers=1,
            )
            work.filled &= work.inside
            work.profile_mask = work.filled
            lo = work.planes = analyse_planes(work.filled, line, work.canal_r, sp)
            work.hu_profile = hu_profile(work.hu, line, lo, sp)
            work.bodies = split_at_dips(find_bodies(lo, sp), work.hu_profile, sp)
            work.notes.append(
                "discs located by HU dips along the spine (cortical shells too faint to close "
                f"at {work.cortical_hu:.0f} HU)"
            )
        if not work.bodies:
            raise SegmentationError(
                series_key, "no-spine", "a canal-like tube was found but no vertebral bodies"
            )
        work.timing["bone2"] = time.perf_counter() - t
        t = time.perf_counter()
        grow_vertebrae(work)
        work.timing["grow"] = time.perf_counter() - t


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


def _canal_search_box(hu: np.ndarray, sp: float) -> tuple[slice, slice]:
    """Where in the axial plane the canal can be: the back 70 % of the patient's depth and
    130 mm either side of the patient's lateral centre of mass.

    Only to save time and memory on wide or long fields of view (arms, whole-body scans); the
    spine is never in the front third of the trunk nor near its lateral edges.
    """
    body = hu[::4, ::4, ::4] > -500
    if not body.any():
        return slice(None), slice(None)
    ix, iy, _ = np.nonzero(body)
    xc = float(np.median(ix)) * 4
    y_lo, y_hi = (float(v) * 4 for v in np.percentile(iy, [1, 99]))
    half = 130.0 / sp
    x0, x1 = int(max(0, xc - half)), int(min(hu.shape[0], xc + half + 1))
    y0 = int(max(0, y_lo + 0.3 * (y_hi - y_lo)))
    return slice(x0, x1), slice(y0, hu.shape[1])


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


def _extend(line: Centreline, shape, length: float) -> Centreline:
    """Extend a centreline straight along its end tangents, up to ``length`` voxels each way,
    staying inside the array's z range."""
    n_end = min(len(line), 15)
    t0 = line.p[n_end - 1] - line.p[0]
    t1 = line.p[-1] - line.p[-n_end]
    t0 /= max(np.linalg.norm(t0), 1e-9)
    t1 /= max(np.linalg.norm(t1), 1e-9)
    zmax = shape[2] - 1
    before = []
    for i in range(1, int(length / line.step) + 1):
        q = line.p[0] - t0 * i * line.step
        if q[2] < -1 or q[2] > zmax + 1:
            break
        before.append(q)
    after = []
    for i in range(1, int(length / line.step) + 1):
        q = line.p[-1] + t1 * i * line.step
        if q[2] < -1 or q[2] > zmax + 1:
            break
        after.append(q)
    pts = np.vstack(before[::-1] + [line.p] + after) if (before or after) else line.p
    return make_centreline(pts, line.step, smooth=0.0)
