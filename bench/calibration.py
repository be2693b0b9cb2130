"""How often a vertebra's name is wrong at each QC confidence (issue 12, item 4).

Segments the hard phantom scenarios (:data:`spine_idc.phantom.HARD_SCENARIOS`, several seeds
each), anchored easy phantoms, and the real cases in ``../shared/data/real`` that carry a
reference, with the classical backend; compares every name with the truth by overlap
(``tests/support/spine_scores.py``), and prints one line per case and a table: per confidence bin, how
many names were right, wrong, or withheld.  ``qc_pass`` (:data:`spine_idc.pipeline.cohort.
QC_PASS_CONFIDENCE`) must lie above the most confident wrong name.

Real cases and what their truth is:

* ``verse004-*``: a CT painted into VerSe's manual mask of sub-verse004 (T9-L5, a wedged L1;
  :mod:`spine_idc.phantom.verse`), in the variants of :data:`MASK_VARIANTS`: real shapes,
  manual truth, drawn tissues;

* ``ts_t11_t12``: TotalSegmentator's T11/T12 labels (model output, not manual truth);
* ``ts_aorta_crop``: TotalSegmentator's T12 mask: the segment that covers most of it;
* ``elastix_thorax``: no label file; the levels were counted by hand from the ribs (the view
  starts just above C7's upper endplate, T1 bears the first ribs): C7 at the top, then T1...

Use seeds the segmenter was not tuned on to see how it generalises::

    python bench/calibration.py [--seeds 1,2,3] [--anchored 0,3,9,4,23,28] [--jobs 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # spine_scores: the tests' way of comparing labellings

from support.spine_scores import score  # noqa: E402

from spine_idc import coding  # noqa: E402
from spine_idc.errors import SeriesError  # noqa: E402
from spine_idc.pipeline.cohort import QC_PASS_CONFIDENCE  # noqa: E402

REAL = REPO.parent / "shared" / "data" / "real"
BINS = (0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 1.01)


def _phantom_case(job: tuple[str, int]) -> dict:
    from spine_idc.phantom import hard_spec, make_phantom, spec_for_seed
    from spine_idc.segment import get_backend

    scenario, seed = job
    spec = spec_for_seed(seed) if scenario == "anchored" else hard_spec(scenario, seed)
    ph = make_phantom(spec)
    t = time.perf_counter()
    try:
        result = get_backend("classical").segment(ph.ct, series_key=f"{scenario}-{seed}")
    except SeriesError as e:  # recorded, as the workflow would: every level missed
        return dict(case=f"{scenario}-{seed}", visible=len(spec.levels), found=0, right=[],
                    withheld=[], wrong=[], spanning=[], mean_dice=0.0, union_dice=0.0, names=[],
                    secs=time.perf_counter() - t, failed=str(e))
    secs = time.perf_counter() - t
    names = {v.label: v.name for v in result.qc.vertebrae}
    s = score(ph.labels.array, result.labels.array, names)  # as the tests judge them
    return _summary(f"{scenario}-{seed}", s, result, secs)


#: Variants of the CT painted into VerSe's manual mask (:mod:`spine_idc.phantom.verse`):
#: slice spacing (mm), osteoporotic bone, a contrast-filled aorta, ribs, seed.
MASK = REAL / "verse004_mask" / "sub-verse004_seg-vert_msk.nii.gz"
MASK_VARIANTS = [
    (1.0, False, True, True, 0), (2.0, False, False, False, 0), (3.0, False, False, True, 0),
    (3.0, True, False, True, 0), (3.0, True, False, True, 1), (3.0, False, True, True, 2),
    (3.0, True, True, True, 2), (2.0, True, True, True, 3),
]


def _mask_case(variant: tuple) -> dict:
    from spine_idc.phantom.verse import MaskTissues, mask_phantom
    from spine_idc.segment import get_backend
    from spine_idc.volume import read_nifti

    slice_mm, faint, contrast, ribs, seed = variant
    ph = mask_phantom(read_nifti(MASK), slice_mm=slice_mm, contrast=contrast, ribs=ribs,
                      tissues=MaskTissues.faint() if faint else None, seed=seed)
    case = (f"verse004-{slice_mm:g}mm" + ("-faint" if faint else "")
            + ("-contrast" if contrast else "") + ("" if ribs else "-noribs") + f"-{seed}")
    t = time.perf_counter()
    try:
        result = get_backend("classical").segment(ph.ct, series_key=case)
    except SeriesError as e:
        return dict(case=case, visible=len(ph.names), found=0, right=[], withheld=[], wrong=[],
                    spanning=[], mean_dice=0.0, union_dice=0.0, names=[],
                    secs=time.perf_counter() - t, failed=str(e))
    names = {v.label: v.name for v in result.qc.vertebrae}
    s = score(ph.labels.array, result.labels.array, names)
    return _summary(case, s, result, time.perf_counter() - t)


def _summary(case: str, s, result, secs: float) -> dict:
    conf = {v.label: v.confidence for v in result.qc.vertebrae}
    names = {v.label: v.name for v in result.qc.vertebrae}
    by_name = {n: conf[label] for label, n in names.items()}
    return dict(
        case=case, visible=len(s.visible), found=len(s.found), right=s.right, withheld=s.withheld,
        wrong=s.wrong, spanning=s.spanning, mean_dice=s.mean_dice, union_dice=s.union_dice,
        # (confidence, verdict) of every vertebra
        names=[(by_name[n], "right") for n in s.right]
        + [(by_name[n], "wrong") for n, _ in s.wrong]
        + [(c, "withheld") for label, c in conf.items() if names[label].startswith("vertebra")],
        secs=secs,
    )


def _real_cases() -> list[dict]:
    from support.spine_scores import labels_on_grid

    from spine_idc.convert import ConvertOptions, load_series
    from spine_idc.segment import get_backend
    from spine_idc.volume import read_nifti

    out = []
    backend = get_backend("classical")
    case = REAL / "ts_t11_t12"
    if case.is_dir():
        files = sorted((case / "dicom").iterdir())
        ct, _ = load_series(files, case.name, ConvertOptions(repair_blank_uids=True, min_slices=3))
        ts = labels_on_grid(case / "labels_totalsegmentator.nii.gz", ct.array.shape, ct.affine)
        truth = np.zeros(ts.shape, np.uint16)
        truth[ts == 33] = coding.LEVEL_BY_NAME["T11"].value  # TotalSegmentator v2: 33 T11, 32 T12
        truth[ts == 32] = coding.LEVEL_BY_NAME["T12"].value
        t = time.perf_counter()
        r = backend.segment(ct, series_key=case.name)
        names = {v.label: v.name for v in r.qc.vertebrae}
        out.append(_summary(case.name, score(truth, r.labels.array, names), r,
                            time.perf_counter() - t))
    case = REAL / "ts_aorta_crop"
    if case.is_dir():
        ct = read_nifti(case / "ct_cropped.nii.gz")
        t12 = labels_on_grid(case / "vertebrae_T12.nii.gz", ct.array.shape, ct.affine) > 0
        truth = np.where(t12, coding.LEVEL_BY_NAME["T12"].value, 0).astype(np.uint16)
        t = time.perf_counter()
        r = backend.segment(ct, series_key=case.name)
        # Only the segment that covers T12 is judged (the other levels have no reference).
        lab = r.labels.array
        values, counts = np.unique(lab[t12 & (lab > 0) & (lab < 150)], return_counts=True)
        keep = int(values[counts.argmax()]) if values.size else -1
        names = {v.label: v.name for v in r.qc.vertebrae if v.label == keep}
        judged = np.where(lab == keep, lab, 0)
        s = score(truth, judged, names)
        summary = _summary(case.name, s, r, time.perf_counter() - t)
        summary["names"] = [x for x in summary["names"] if x[1] != "withheld"] + [
            (v.confidence, "withheld") for v in r.qc.vertebrae
            if v.label == keep and v.name.startswith("vertebra")]
        out.append(summary)
    case = REAL / "elastix_thorax"
    if case.is_dir():
        files = sorted((case / "dicom").iterdir())
        ct, _ = load_series(files, case.name, ConvertOptions())
        t = time.perf_counter()
        r = backend.segment(ct, series_key=case.name)
        secs = time.perf_counter() - t
        # cranio-caudally from the top: C7, T1, T2, ... (counted from the ribs by hand)
        order = sorted(r.qc.vertebrae, key=lambda v: -v.centroid_lps[2])
        expected = [lv.name for lv in coding.LEVELS][6: 6 + len(order)]
        verdicts = []
        for v, name in zip(order, expected):
            if v.name.startswith("vertebra"):
                verdicts.append((v.confidence, "withheld"))
            else:
                verdicts.append((v.confidence, "right" if v.name == name else "wrong"))
        out.append(dict(case=case.name, visible=len(order), found=len(order),
                        right=[v.name for v, (_, x) in zip(order, verdicts) if x == "right"],
                        withheld=[], wrong=[(v.name, e) for v, e, (_, x) in
                                            zip(order, expected, verdicts) if x == "wrong"],
                        spanning=[], mean_dice=float("nan"), union_dice=float("nan"),
                        names=verdicts, secs=secs))
    return out


def main() -> None:
    from spine_idc.phantom import HARD_SCENARIOS

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="1,2,3", help="seeds of each hard scenario")
    ap.add_argument("--anchored", default="0,3,9,4,23,28", help="seeds of easy phantoms")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--no-real", action="store_true")
    args = ap.parse_args()
    seeds = [int(x) for x in args.seeds.split(",") if x]
    jobs = [(sc, s) for sc in HARD_SCENARIOS for s in seeds]
    jobs += [("anchored", int(x)) for x in args.anchored.split(",") if x]
    with ProcessPoolExecutor(args.jobs) as pool:
        cases = list(pool.map(_phantom_case, jobs))
        if not args.no_real and MASK.is_file():
            cases += list(pool.map(_mask_case, MASK_VARIANTS))
    if not args.no_real:
        cases += _real_cases()
    print(f"{'case':26s} {'found':>7s} {'right':>5s} {'held':>5s} {'wrong':>5s} {'Dice':>6s} "
          f"{'union':>6s} {'s':>5s}")
    for c in cases:
        print(f"{c['case']:26s} {c['found']:>3d}/{c['visible']:<3d} {len(c['right']):5d} "
              f"{len(c['withheld']):5d} {len(c['wrong']):5d} {c['mean_dice']:6.3f} "
              f"{c['union_dice']:6.3f} {c['secs']:5.1f}"
              + (f"  wrong {c['wrong']}" if c["wrong"] else "")
              + (f"  spanning {c['spanning']}" if c["spanning"] else "")
              + (f"  FAILED: {c['failed']}" if c.get("failed") else ""))
    verdicts = [x for c in cases for x in c["names"]]
    print(f"\nnames by QC confidence ({len(cases)} cases, {len(verdicts)} vertebrae):")
    print(f"{'confidence':>12s} {'right':>6s} {'wrong':>6s} {'withheld':>9s}")
    for lo, hi in zip(BINS[:-1], BINS[1:]):
        inside = [v for c, v in verdicts if lo <= c < hi]
        print(f"{lo:5.2f}-{min(hi, 1.0):4.2f}  {inside.count('right'):6d} {inside.count('wrong'):6d} "
              f"{inside.count('withheld'):9d}")
    wrong = [c for c, v in verdicts if v == "wrong"]
    right = [c for c, v in verdicts if v == "right"]
    print(f"\nqc_pass cut-off {QC_PASS_CONFIDENCE}: most confident wrong name "
          f"{max(wrong) if wrong else 'none'}; right names passing "
          f"{sum(c >= QC_PASS_CONFIDENCE for c in right)}/{len(right)}; wrong names passing "
          f"{sum(c >= QC_PASS_CONFIDENCE for c in wrong)}")
    dice = [c["mean_dice"] for c in cases if np.isfinite(c["mean_dice"])]
    print(f"mean per-level Dice over the cases with a reference: {np.mean(dice):.3f}")


if __name__ == "__main__":
    main()
