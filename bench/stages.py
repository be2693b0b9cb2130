"""Time each stage for one series on a phantom of realistic size (512x512x300 by default).

Prints seconds per stage for spine-idc, with the tool a user would otherwise reach for measured
in the same run where it is installed (dcm2niix for conversion), and published figures where it
is not (TotalSegmentator).  Usage::

    python bench/stages.py [--seed 0] [--size realistic] [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from spine_idc.config import Config
from spine_idc.manifest import ManifestRow, write_manifest
from spine_idc.phantom import spec_for_seed, write_phantom
from spine_idc.pipeline import stages
from spine_idc.pipeline.segment_runner import SeriesJob
from spine_idc.sources.scan import scan_folder

# TotalSegmentator README: "1 min 17 s" for a 512x512x280 CT at 1.5 mm with the GPU model on an
# RTX 3090 (the `total` task, all 104+ classes); we set it beside ours as a reference point only.
TOTALSEG_PUBLISHED_S = 77.0


def timed(fn, *args, repeat: int = 1, **kwargs) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(*args, **kwargs)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", default="realistic", choices=["test", "realistic"])
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    cfg = Config.from_dict({})
    spec = spec_for_seed(args.seed, size=args.size)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        write_phantom(args.seed, root / "phantom", size=args.size)
        t_phantom = time.perf_counter() - t0
        (found,) = scan_folder(root / "phantom")
        lists = root / "lists"
        lists.mkdir()
        (lists / f"{found.key}.files").write_text(
            "".join(f"{root / 'phantom' / f if not Path(f).is_absolute() else f}\n" for f in found.files)
        )
        manifest = root / "manifest.tsv"
        row = ManifestRow(found.key, found.series_instance_uid, found.study_instance_uid,
                          found.patient_id, found.modality, found.series_description,
                          found.n_files, "phantom", str(lists / f"{found.key}.files"))
        write_manifest([row], manifest)
        key = found.key
        conv, segd = root / "convert", root / "segment"
        meas, seg, sr = root / "m.json", root / "seg.dcm", root / "sr.dcm"
        rows = [
            ("convert (DICOM -> NIfTI HU)",
             timed(stages.convert, row, cfg.convert_options(), conv, repeat=args.repeat)),
            ("segment (classical, CPU)",
             timed(stages.segment, [SeriesJob(key, conv, segd)], cfg.segment, repeat=args.repeat)),
            ("measure", timed(stages.measure, conv, segd, cfg.measure, meas, repeat=args.repeat)),
            ("DICOM SEG", timed(stages.write_seg, conv, segd, seg, repeat=args.repeat)),
            ("DICOM SR", timed(stages.write_sr, conv, meas, seg, sr, repeat=args.repeat)),
        ]
        n_levels = len(json.loads(meas.read_text())["measurements"])
        dcm2niix = shutil.which("dcm2niix")
        t_dcm2niix = None
        if dcm2niix:
            out = root / "dcm2niix"
            out.mkdir()
            t_dcm2niix = timed(
                subprocess.run,
                [dcm2niix, "-z", "y", "-o", str(out), "-f", "vol", str(root / "phantom" / "dicom")],
                check=True, capture_output=True, repeat=args.repeat,
            )
    print(f"phantom seed {args.seed}: {spec.shape[0]}x{spec.shape[1]}x{spec.shape[2]} voxels, "
          f"{spec.pixel_spacing_mm:.2f} mm pixels, {spec.slice_spacing_mm:.2f} mm slices, "
          f"{n_levels} vertebrae; generated in {t_phantom:.1f} s")
    print(f"{'stage':32s} {'seconds':>8s}   reference")
    total = 0.0
    for name, seconds in rows:
        total += seconds
        ref = ""
        if name.startswith("convert") and t_dcm2niix:
            ref = f"dcm2niix -z y {t_dcm2niix:.2f} s (ratio ours/dcm2niix {seconds / t_dcm2niix:.2f})"
        if name.startswith("segment"):
            ref = (f"TotalSegmentator published {TOTALSEG_PUBLISHED_S:.0f} s on an RTX 3090 "
                   f"(512x512x280, 1.5 mm; README), ratio {seconds / TOTALSEG_PUBLISHED_S:.2f}")
        print(f"{name:32s} {seconds:8.2f}   {ref}")
    print(f"{'total per series':32s} {total:8.2f}   -> {3600 / total:.0f} series/hour on this machine")


if __name__ == "__main__":
    main()
