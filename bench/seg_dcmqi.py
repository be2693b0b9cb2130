"""Time writing the SEG of a 512x512x300 CT with 26 segments: spine-idc beside dcmqi.

The CT is a realistic-size phantom series (:func:`spine_idc.phantom.write_phantom`); its label map
has the phantom's vertebrae cut into 26 cranio-caudal slabs labelled C1 ... L5, S1, sacrum, so
every row of the label table that the 26 segments need is used, with the vertebrae's shapes.
Both tools get the same label map (NIfTI) and the same DICOM folder:

* spine-idc: the ``seg`` stage (:func:`spine_idc.pipeline.stages.write_seg`: read ``series.json`` and the
  label map, read the source headers, build the SEG with highdicom, write it), in this process
  (warm: imports done) and as the workflow runs it, a fresh ``spine-idc seg`` process;
* dcmqi: ``itkimage2segimage`` with a metadata JSON carrying the same codes, labels, colours and
  algorithm name.

Each is run ``--repeat`` times; the table shows the best wall-clock and CPU seconds (CPU counts
every thread: dcmqi uses several) and checks each output: dciodvfy errors, segments, frames, and
whether it decodes (with highdicom) to exactly the input label map.  Usage::

    python bench/seg_dcmqi.py [--seed 2] [--repeat 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from spine_idc import coding, layout
from spine_idc.convert import load_series, write_converted
from spine_idc.phantom import write_phantom
from spine_idc.pipeline import stages
from spine_idc.volume import LPS_TO_RAS, Volume, read_nifti, write_nifti

N_SEGMENTS = 26
#: The 26 rows, cranio-caudally: C1-L5, S1, sacrum.
ROWS = [*coding.LEVELS[:-1], coding.LEVEL_BY_NAME["S1"], coding.LEVEL_BY_NAME["sacrum"]]
ALGORITHM = {"name": "bench", "version": "0.1.0", "parameters": {"spacing_mm": 1.0}}


def slab_labels(truth: Volume) -> np.ndarray:
    """The phantom's vertebra voxels cut into 26 slabs of equal height, C1 at the top."""
    bone = np.asarray(truth.array) > 0
    m = LPS_TO_RAS @ truth.affine
    height = m[2, 2] * np.arange(bone.shape[2]) + m[2, 3]  # superior (mm) of slice k
    ks = np.flatnonzero(bone.any(axis=(0, 1)))
    top_down = ks[np.argsort(-height[ks])]
    lab = np.zeros(bone.shape, dtype=np.uint8)
    for row, chunk in zip(ROWS, np.array_split(top_down, N_SEGMENTS)):
        lab[:, :, chunk] = np.where(bone[:, :, chunk], row.value, 0)
    return lab


def dcmqi_metadata() -> dict:
    """itkimage2segimage's metadata: the same codes, labels and colours as spine-idc's SEG."""

    def code(c) -> dict:
        return {"CodeValue": c.value, "CodingSchemeDesignator": c.scheme_designator,
                "CodeMeaning": c.meaning}

    segments = [{
        "labelID": row.value,
        "SegmentLabel": row.name,
        "SegmentDescription": row.name,
        "SegmentAlgorithmType": "AUTOMATIC",
        "SegmentAlgorithmName": f"spine-idc {ALGORITHM['name']}",
        "SegmentedPropertyCategoryCodeSequence": code(coding.CATEGORY_ANATOMICAL_STRUCTURE),
        "SegmentedPropertyTypeCodeSequence": code(row.code),
        "recommendedDisplayRGBValue": list(row.rgb),
    } for row in ROWS]
    return {
        "ContentCreatorName": "Bench^SpineIDC",
        "ClinicalTrialCoordinatingCenterName": "spine-idc",
        "ClinicalTrialSeriesID": "1",
        "ClinicalTrialTimePointID": "1",
        "SeriesDescription": "Vertebrae (dcmqi)",
        "SeriesNumber": "903",
        "InstanceNumber": "1",
        "ContentLabel": "VERTEBRAE",
        "ContentDescription": "Vertebrae",
        "BodyPartExamined": "SPINE",
        "segmentAttributes": [segments],
    }


def best(fn, repeat: int) -> tuple[float, float]:
    """Best wall-clock and best CPU seconds of ``fn()`` (CPU: this process and its children)."""
    walls, cpus = [], []
    for _ in range(repeat):
        self0, kids0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
            resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
        self1, kids1 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
            resource.RUSAGE_CHILDREN)
        cpus.append(sum(b.ru_utime - a.ru_utime + b.ru_stime - a.ru_stime
                        for a, b in ((self0, self1), (kids0, kids1))))
    return min(walls), min(cpus)


def run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({proc.returncode}):\n{proc.stdout[-2000:]}"
                         f"\n{proc.stderr[-2000:]}")


def dciodvfy_errors(path: Path) -> str:
    tool = shutil.which("dciodvfy")
    if tool is None:
        return "n/a"
    out = subprocess.run([tool, str(path)], capture_output=True, text=True)
    return str(sum(ln.startswith("Error") for ln in (out.stdout + out.stderr).splitlines()))


def decoded_equals(path: Path, info, lab: np.ndarray) -> bool:
    """Whether the SEG decodes (highdicom, through its source references) to ``lab``.

    dcmqi does not state Spatial Locations Preserved in its frames' derivation items, so that
    check is waived; the frames' positions are the source's either way (dciodvfy and
    highdicom's geometry checks pass).
    """
    import highdicom as hd

    seg = hd.seg.segread(path)
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=info.sop_instance_uids, combine_segments=True,
        relabel=False, assert_missing_frames_are_empty=True, ignore_spatial_locations=True)
    lut = np.zeros(int(pixels.max()) + 1, dtype=np.uint8)
    for item in seg.SegmentSequence:
        lut[int(item.SegmentNumber)] = coding.LEVEL_BY_NAME[str(item.SegmentLabel)].value
    return bool(np.array_equal(lut[pixels].transpose(2, 1, 0), lab))


def describe(path: Path, info, lab: np.ndarray) -> dict:
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return {"segments": len(ds.SegmentSequence), "frames": int(ds.NumberOfFrames),
            "MB": path.stat().st_size / 1e6, "dciodvfy errors": dciodvfy_errors(path),
            "same labels": "yes" if decoded_equals(path, info, lab) else "NO"}


def _dcmqi_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dcmqi")
    except PackageNotFoundError:  # a dcmqi build on PATH, not the PyPI package
        return "(not from PyPI)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=2, help="phantom seed (2: T1-sacrum in view)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", type=Path, help="write the inputs and outputs here and keep them")
    args = ap.parse_args()
    dcmqi = shutil.which("itkimage2segimage") or shutil.which(
        "itkimage2segimage", path=str(Path(sys.executable).parent))
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        print(f"phantom {args.seed}, realistic size ...", flush=True)
        files, truth_path = write_phantom(args.seed, root / "phantom", size="realistic")
        ct, info = load_series(files, f"phantom-{args.seed}")
        converted, segmented = root / "convert", root / "segment"
        write_converted(ct, info, converted)
        truth = read_nifti(truth_path)
        assert truth.same_grid(ct), "phantom labels are not on the converted grid"
        lab = slab_labels(Volume(np.asarray(truth.array), ct.affine))
        segmented.mkdir(exist_ok=True)
        write_nifti(Volume(lab, ct.affine), segmented / layout.LABELS)
        (segmented / layout.QC).write_text(json.dumps({"algorithm": ALGORITHM}))
        metadata = root / "dcmqi.json"
        metadata.write_text(json.dumps(dcmqi_metadata(), indent=1))
        shape = "x".join(map(str, ct.array.shape))
        print(f"CT {shape}, {len(np.unique(lab)) - 1} segments, "
              f"{int((lab.reshape(-1, lab.shape[2]) > 0).any(axis=0).sum())} slices labelled",
              flush=True)

        ours, cli, theirs = root / "spine-idc.dcm", root / "spine-idc-cli.dcm", root / "dcmqi.dcm"
        rows = {}
        rows["spine-idc, in process (warm)"] = (
            best(lambda: stages.write_seg(converted, segmented, ours), args.repeat), ours)
        rows["spine-idc seg, fresh process"] = (best(lambda: run([
            sys.executable, "-m", "spine_idc.cli", "seg", "--converted", str(converted),
            "--segmented", str(segmented), "--out", str(cli)]), args.repeat), cli)
        if dcmqi:
            label = f"dcmqi {_dcmqi_version()} itkimage2segimage"
            rows[label] = (best(lambda: run([
                dcmqi, "--inputImageList", str(segmented / layout.LABELS),
                "--inputDICOMDirectory", str(files[0].parent), "--outputDICOM", str(theirs),
                "--inputMetadata", str(metadata)]), args.repeat), theirs)
        else:
            print("itkimage2segimage not found (pip install dcmqi): dcmqi not timed")

        print(f"\nSEG of a {shape} CT, {N_SEGMENTS} segments, best of {args.repeat}:\n")
        head = (f"{'writer':44s} {'wall s':>7s} {'CPU s':>6s} {'segments':>8s} {'frames':>6s} "
                f"{'MB':>5s} {'dciodvfy errors':>15s} {'same labels':>11s}")
        print(head)
        print("-" * len(head))
        for name, ((wall, cpu), path) in rows.items():
            d = describe(path, info, lab)
            print(f"{name:44s} {wall:7.2f} {cpu:6.2f} {d['segments']:8d} {d['frames']:6d} "
                  f"{d['MB']:5.1f} {d['dciodvfy errors']:>15s} {d['same labels']:>11s}")
        if dcmqi:
            (w_ours, c_ours), _ = rows["spine-idc, in process (warm)"]
            (w_cli, c_cli), _ = rows["spine-idc seg, fresh process"]
            (w_dcmqi, c_dcmqi), _ = rows[label]
            print(f"\ndcmqi / spine-idc: wall {w_dcmqi / w_ours:.2f} (warm), "
                  f"{w_dcmqi / w_cli:.2f} (fresh process); CPU {c_dcmqi / c_ours:.2f} (warm), "
                  f"{c_dcmqi / c_cli:.2f} (fresh process)  (> 1: spine-idc is faster)")


if __name__ == "__main__":
    main()
