"""IDC's own tools read our outputs: dcmqi (the converter behind IDC's SEG and SR collections)
turns our SEG back into one image per segment and our SR into its measurement JSON.

dcmqi comes from PyPI (test extra); the tests skip where its binaries are missing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from spine_idc.dicom import write_sr
from test_dicom_sr import ALGORITHM, case  # noqa: F401 - a fixture

BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path=str(BIN))
    if not path:
        pytest.skip(f"dcmqi's {name} is not installed (pip install dcmqi)")
    return path


def test_dcmqi_reads_our_seg_onto_the_ct_grid(case, tmp_path):  # noqa: F811
    info, _measurements, seg, folder = case
    out = tmp_path / "dcmqi"
    out.mkdir()
    run = subprocess.run([tool("segimage2itkimage"), "--inputDICOM", str(folder / "seg.dcm"),
                          "--outputDirectory", str(out), "--outputType", "nifti"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    meta = json.loads((out / "meta.json").read_text())
    segments = [s for group in meta["segmentAttributes"] for s in group]
    by_number = {s.SegmentNumber: s for s in seg.SegmentSequence}
    assert len(segments) == len(by_number)
    from spine_idc.convert import load_series

    ct, _ = load_series(info.files, info.series_key)
    labels = {int(s.SegmentNumber): s for s in seg.SegmentSequence}
    for attrs in segments:
        number = attrs["labelID"]
        ours = labels[number]
        assert attrs["SegmentedPropertyTypeCodeSequence"]["CodeValue"] == \
            ours.SegmentedPropertyTypeCodeSequence[0].CodeValue
        image = nib.load(out / f"{number}.nii.gz")
        mask = np.asarray(image.dataobj) > 0
        # every voxel dcmqi marks, mapped through its own geometry onto our CT grid
        ijk = np.argwhere(mask)
        world = nib.affines.apply_affine(image.affine, ijk)
        ct_ijk = np.rint(nib.affines.apply_affine(np.linalg.inv(ct.affine), world)).astype(int)
        assert len(ct_ijk) > 0
        marked = np.zeros(ct.array.shape, dtype=bool)
        marked[tuple(ct_ijk.T)] = True
        expected = _segment_mask(seg, number, ct.array.shape, info)
        assert np.array_equal(marked, expected), f"segment {number} lands elsewhere"


def _segment_mask(seg, number: int, shape, info) -> np.ndarray:
    """Our SEG decoded by highdicom onto the source slices (slice order k of ``info``)."""
    import highdicom as hd

    decoded = hd.seg.Segmentation.from_dataset(seg)
    volume = decoded.get_pixels_by_source_instance(
        source_sop_instance_uids=list(info.sop_instance_uids), segment_numbers=[number],
        assert_missing_frames_are_empty=True)
    # (k, row, column, 1) -> (column i, row j, slice k)
    return np.transpose(volume[..., 0], (2, 1, 0)).astype(bool).reshape(shape)


def test_dcmqi_reads_our_sr(case, tmp_path):  # noqa: F811
    info, measurements, seg, folder = case
    sr = write_sr(measurements, seg, info, ALGORITHM, folder / "sr.dcm",
                  qc={"spine_found": True, "labels_contiguous": True})
    out = tmp_path / "sr.json"
    run = subprocess.run([tool("tid1500reader"), "--inputDICOM", str(sr), "--outputMetadata", str(out)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(out.read_text())
    groups = [g for g in report["Measurements"] if g.get("measurementItems")]
    assert len(groups) == len(measurements)
    sites = {g["FindingSite"]["CodeValue"] for g in groups}
    assert sites == {"23215003", "66794005"}  # T12, L1
    for group in groups:
        names = {m["quantity"]["CodeValue"] for m in group["measurementItems"]}
        assert {"118565006", "112031"} <= names  # volume, attenuation
    assert pydicom.dcmread(sr).SOPInstanceUID
