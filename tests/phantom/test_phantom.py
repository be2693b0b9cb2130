"""Synthetic spine CT phantoms: determinism, anatomy, HU statistics and the DICOM series."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from spine_idc import coding
from spine_idc.phantom import (
    NAMES,
    ORIENTATIONS,
    Tissue,
    make_phantom,
    spec_for_seed,
    write_dicom_series,
    write_phantom,
)
from spine_idc.volume import LPS_TO_RAS, read_nifti

THORACOLUMBAR = ("T10", "T11", "T12", "L1")


@pytest.fixture(scope="module")
def small():
    """A small thoracic phantom (three levels, ribs, lungs)."""
    return make_phantom(spec_for_seed(1, levels=("T5", "T6", "T7")))


@pytest.fixture(scope="module")
def thoracolumbar():
    return make_phantom(spec_for_seed(0, levels=THORACOLUMBAR))


def _value(name: str) -> int:
    return coding.LEVEL_BY_NAME[name].value


def _read_series(files):
    """Rebuild a volume as a correct converter does: sort by IPP along the normal, stack."""
    dss = [pydicom.dcmread(f) for f in files]
    iop = np.array(dss[0].ImageOrientationPatient, dtype=float)
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    dss.sort(key=lambda d: float(np.dot(np.array(d.ImagePositionPatient, dtype=float), normal)))
    array = np.stack(
        [d.pixel_array.T.astype(np.int32) * float(d.RescaleSlope) + float(d.RescaleIntercept)
         for d in dss], axis=2)
    first = np.array(dss[0].ImagePositionPatient, dtype=float)
    last = np.array(dss[-1].ImagePositionPatient, dtype=float)
    row_spacing, col_spacing = (float(v) for v in dss[0].PixelSpacing)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1] = row * col_spacing, col * row_spacing
    lps[:3, 2], lps[:3, 3] = (last - first) / (len(dss) - 1), first
    return array, LPS_TO_RAS @ lps, dss


def test_specs_are_deterministic_and_vary_with_the_seed():
    specs = [spec_for_seed(seed) for seed in range(40)]
    assert specs == [spec_for_seed(seed) for seed in range(40)]
    assert {s.patient_position for s in specs} == set(ORIENTATIONS)
    assert {s.descending_order for s in specs} == {True, False}
    assert len({(s.levels[0], s.levels[-1]) for s in specs}) >= 6
    assert any(s.levels[-1] == "sacrum" for s in specs) and any(s.levels[0] == "C3" for s in specs)
    for s in specs:
        assert s.shape[:2] == (192, 192) and 16 <= s.shape[2] <= 200
        assert 1.0 <= s.pixel_spacing_mm <= 1.5 and 1.0 <= s.slice_spacing_mm <= 3.0
        assert s.slice_spacing_mm <= s.slice_thickness_mm <= 3.0
        assert 90 <= s.trabecular_hu <= 300 and 10 <= s.noise_hu <= 25
        idx = [NAMES.index(n) for n in s.levels]
        assert idx == list(range(idx[0], idx[-1] + 1))
    big = spec_for_seed(3, size="realistic")
    assert big.shape == (512, 512, 300) and 0.6 <= big.pixel_spacing_mm <= 1.0


def test_requested_levels_are_the_view():
    levels = ("L1", "L2", "L3", "L4", "L5", "sacrum")
    assert spec_for_seed(5, levels=levels).levels == levels


def test_same_seed_same_phantom_other_seed_other_phantom(small):
    again = make_phantom(small.spec)
    assert np.array_equal(again.ct.array, small.ct.array)
    assert np.array_equal(again.labels.array, small.labels.array)
    assert np.array_equal(again.ct.affine, small.ct.affine)
    assert again.trabecular_hu_by_level == small.trabecular_hu_by_level
    other = make_phantom(spec_for_seed(2, levels=("T5", "T6", "T7")))
    assert other.spec != small.spec
    assert other.ct.array.shape != small.ct.array.shape or not np.array_equal(
        other.ct.array, small.ct.array)


def test_spec_errors():
    spec = spec_for_seed(1, levels=("T5", "T6", "T7"))
    with pytest.raises(ValueError, match="contiguous"):
        make_phantom(dataclasses.replace(spec, levels=("T5", "T7")))
    with pytest.raises(ValueError, match="levels"):
        make_phantom(dataclasses.replace(spec, levels=("T13",)))
    with pytest.raises(ValueError, match="outside"):
        make_phantom(dataclasses.replace(spec, fov_offset_mm=400.0))
    with pytest.raises(ValueError, match="patient_position"):
        make_phantom(dataclasses.replace(spec, patient_position="LFS"))


@pytest.mark.parametrize("seed, levels", [
    (1, None), (2, ("T11", "T12", "L1", "L2")), (4, ("L4", "L5", "sacrum")),
    (7, ("C4", "C5", "C6", "C7"))])
def test_every_level_is_labelled_as_whole_bone(seed, levels):
    ph = make_phantom(spec_for_seed(seed, levels=levels))
    lab, tis = ph.labels.array, ph.tissues.array
    values = {_value(n) for n in ph.spec.levels}
    assert set(np.unique(lab)) - {0} == values
    bone = (tis == Tissue.CORTICAL) | (tis == Tissue.TRABECULAR)
    assert np.array_equal(lab > 0, bone)  # no disc, canal or rib voxel carries a label
    ml = ph.ct.voxel_volume_mm3 / 1000
    plausible = {"cervical": (3, 30), "thoracic": (8, 70), "lumbar": (25, 110)}
    spacing = ph.ct.spacing
    for name in ph.spec.levels[1:-1]:  # the end levels may be cut by the field of view
        mask = lab == _value(name)
        low, high = plausible[coding.LEVEL_BY_NAME[name].region.value]
        assert low <= mask.sum() * ml <= high, name
        # body plus posterior elements: deeper than the body alone (AP is the row axis)
        rows = np.flatnonzero(mask.any(axis=(0, 2)))
        assert (rows[-1] - rows[0] + 1) * spacing[1] > 50, name
    if "sacrum" in ph.spec.levels:
        assert (lab == coding.SACRUM_VALUE).sum() * ml > 40
    assert (tis == Tissue.DISC).sum() > 0
    if ph.spec.levels[-1] in ("T7", "L2", "sacrum"):  # ribs, or iliac wings
        assert (tis == Tissue.OTHER_BONE).sum() > 0


def test_atlas_and_axis():
    """C1 has no body: C2's dens rises into C1's ring, with no disc between them, and the
    base of the skull lies above C1, apart from it (a joint space), as no vertebra's bone."""
    from spine_idc.phantom import hard_spec

    ph = make_phantom(hard_spec("cervical", 1))
    lab, tis = ph.labels.array, ph.tissues.array
    lps = np.linalg.inv(LPS_TO_RAS) @ ph.ct.affine
    z = lambda mask: (lps @ np.c_[np.argwhere(mask), np.ones(int(mask.sum()))].T)[2]  # noqa: E731
    c1, c2, c3 = (z(lab == _value(n)) for n in ("C1", "C2", "C3"))
    assert c2.max() - c1.min() >= 10.0  # the dens stands within C1's ring
    assert c2.max() - c2.min() >= 1.6 * (c3.max() - c3.min()) - 10.0  # C2 is tall
    disc = z(tis == Tissue.DISC)
    assert not ((disc > c2.max() - 15.0) & (disc < c1.max())).any()  # no C1/C2 disc
    skull = tis == Tissue.OTHER_BONE
    assert z(skull).max() > c1.max() + 5.0
    assert not (ndimage.binary_dilation(lab == _value("C1")) & skull).any()
    ml = ph.ct.voxel_volume_mm3 / 1000
    assert 2.0 <= (lab == _value("C1")).sum() * ml <= 15.0


def test_ribs_leave_a_joint_space(small):
    lab, tis = small.labels.array, small.tissues.array
    ribs = tis == Tissue.OTHER_BONE
    assert ribs.sum() * small.ct.voxel_volume_mm3 > 20_000  # ribs (and sternum) are there
    assert not (ndimage.binary_dilation(lab > 0) & ribs).any()
    assert (tis == Tissue.LUNG).sum() * small.ct.voxel_volume_mm3 > 200_000


def test_hu_statistics_per_tissue(thoracolumbar):
    ph = thoracolumbar
    ct, tis, lab = ph.ct.array.astype(float), ph.tissues.array, ph.labels.array

    def core(mask, n=2):
        return ndimage.binary_erosion(mask, iterations=n)

    def median(mask):
        assert mask.sum() > 50
        return float(np.median(ct[mask]))

    assert -1024 <= median(core(tis == Tissue.AIR)) <= -980
    assert -900 <= median(core(tis == Tissue.LUNG)) <= -800
    assert -125 <= median(core(tis == Tissue.FAT)) <= -75
    soft = core(tis == Tissue.SOFT, 3)
    assert 25 <= median(soft) <= 65
    noise = ph.spec.noise_hu
    assert 0.8 * noise <= np.std(ct[soft]) <= 1.3 * np.hypot(noise, 8)
    assert 60 <= median(core(tis == Tissue.DISC, 1)) <= 120
    assert 0 <= median(core((tis == Tissue.CSF) | (tis == Tissue.CORD), 1)) <= 45
    for name, trab in ph.trabecular_hu_by_level.items():
        inner = core((tis == Tissue.TRABECULAR) & (lab == _value(name)))
        assert abs(median(inner) - trab) <= max(15, 0.1 * trab), name
        shell = (tis == Tissue.CORTICAL) & (lab == _value(name))
        assert np.percentile(ct[shell], 90) > trab + 200, name
    assert 700 <= ph.tissue_hu["cortical"] <= 1200
    assert ct.max() <= 3071 and ct.min() >= -1024


def test_orientations_are_flips_of_one_anatomy(small):
    base = dataclasses.replace(small.spec, patient_position="HFS")
    hfs = make_phantom(base)
    flips = {"HFS": (1, 1, 1), "FFS": (-1, 1, -1), "HFP": (-1, -1, 1), "FFP": (1, -1, -1)}
    for position, (fx, fy, fz) in flips.items():
        ph = make_phantom(dataclasses.replace(base, patient_position=position))
        assert np.array_equal(ph.ct.array, hfs.ct.array[::fx, ::fy, ::fz]), position
        # the same voxel in both grids is the same point in space
        ijk = np.array([3, 5, 7, 1.0])
        n = np.array(ph.ct.array.shape)
        mirrored = np.where(np.array([fx, fy, fz]) < 0, n - 1 - ijk[:3], ijk[:3])
        assert np.allclose(ph.ct.affine @ ijk, hfs.ct.affine @ np.append(mirrored, 1), atol=1e-6)


@pytest.mark.parametrize("position", sorted(ORIENTATIONS))
@pytest.mark.parametrize("descending", [False, True])
def test_dicom_round_trip(small, tmp_path, position, descending):
    ph = make_phantom(dataclasses.replace(small.spec, patient_position=position,
                                          descending_order=descending))
    files = write_dicom_series(ph, tmp_path)
    assert len(files) == ph.spec.shape[2]
    assert all(re.fullmatch(r"[0-9a-f]{20}\.dcm", f.name) for f in files)
    assert [f.name for f in files] != sorted(f.name for f in files)
    array, affine, dss = _read_series(files)
    assert np.array_equal(array, ph.ct.array)
    assert np.allclose(affine, ph.ct.affine, atol=1e-6)
    numbers = [int(d.InstanceNumber) for d in dss]
    n = len(dss)
    assert numbers == (list(range(n, 0, -1)) if descending else list(range(1, n + 1)))
    # files come back in slice order k
    assert [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files] == [
        d.SOPInstanceUID for d in dss]
    d = dss[0]
    assert d.PatientPosition == position and d.Modality == "CT"
    assert list(d.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert float(d.SliceThickness) == ph.spec.slice_thickness_mm
    assert float(d.SpacingBetweenSlices) == ph.spec.slice_spacing_mm
    assert d.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    for uid in (d.StudyInstanceUID, d.SeriesInstanceUID, d.FrameOfReferenceUID, d.SOPInstanceUID):
        assert pydicom.uid.UID(uid).is_valid
    assert len({x.SOPInstanceUID for x in dss}) == n
    assert len({x.SeriesInstanceUID for x in dss}) == 1


def test_uids_are_deterministic_and_overridable(small, tmp_path):
    first = write_dicom_series(small, tmp_path / "a")
    second = write_dicom_series(small, tmp_path / "b")
    assert [f.name for f in first] == [f.name for f in second]
    assert first[0].read_bytes() == second[0].read_bytes()
    custom = write_dicom_series(small, tmp_path / "c", series_instance_uid="1.2.3.4",
                                study_instance_uid="1.2.3")
    ds = pydicom.dcmread(custom[0])
    assert ds.SeriesInstanceUID == "1.2.3.4" and ds.StudyInstanceUID == "1.2.3"
    assert not (set(f.name for f in custom) & set(f.name for f in first))


def test_write_phantom(tmp_path):
    files, labels_path = write_phantom(1, tmp_path)
    assert labels_path == tmp_path / "labels.nii.gz"
    assert all(f.parent == tmp_path / "dicom" for f in files)
    ph = make_phantom(spec_for_seed(1))
    labels = read_nifti(labels_path)
    assert labels.array.dtype == np.uint8
    assert np.array_equal(labels.array, ph.labels.array)
    assert np.allclose(labels.affine, ph.labels.affine, atol=1e-5)
    array, affine, _ = _read_series(files)
    assert np.array_equal(array, ph.ct.array) and np.allclose(affine, labels.affine, atol=1e-5)
    assert not list(tmp_path.rglob(".tmp-*"))


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not installed")
def test_dciodvfy_accepts_the_series(small, tmp_path):
    files = write_dicom_series(small, tmp_path)
    for f in files[:3]:
        run = subprocess.run(["dciodvfy", str(f)], capture_output=True, text=True)
        report = run.stdout + run.stderr
        assert run.returncode == 0, report
        assert not [line for line in report.splitlines() if line.startswith("Error")], report
