"""Tests of spine_idc.measure on analytic shapes drawn on anisotropic, oblique, flipped grids."""

from __future__ import annotations

import numpy as np
import pytest

from spine_idc.measure import MIN_TRABECULAR_VOXELS, measure_vertebrae
from spine_idc.volume import LPS_TO_RAS, Volume

SPACING = (0.7, 0.9, 1.6)
L1 = 20  # label value of L1 (VerSe numbering)


def _rotation(deg_x: float, deg_z: float) -> np.ndarray:
    ax, az = np.radians(deg_x), np.radians(deg_z)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ rx


def make_grid(shape=(110, 90, 50), spacing=SPACING, deg_x=15.0, deg_z=30.0, flip=(-1, 1, 1)):
    """A voxel grid centred on the LPS origin; returns (affine RAS, LPS centres of all voxels)."""
    m = np.eye(4)
    m[:3, :3] = _rotation(deg_x, deg_z) @ np.diag(np.array(flip) * np.array(spacing))
    # off-centre by a fraction of a voxel so no voxel centre lies exactly on a shape's face
    centre = (np.array(shape) - 1) / 2.0 + 0.37
    m[:3, 3] = -m[:3, :3] @ centre
    idx = np.indices(shape).reshape(3, -1).T
    pts = (idx @ m[:3, :3].T + m[:3, 3]).reshape(*shape, 3)
    return LPS_TO_RAS @ m, pts


def vertebra_phantom(pts, *, wedge=None, posterior=True):
    """Body box x 40 / y 30 / z 24 mm around the origin, posterior elements behind it (+y).

    ``wedge=(h_posterior, h_anterior)`` makes the body height vary linearly from y=+15
    (posterior) to y=-15 (anterior), symmetric about z=0.  CT: 1 mm cortex of 1000 HU around a
    200 HU core, posterior elements 500 HU, background 0.
    """
    x, y, z = pts[..., 0], pts[..., 1], pts[..., 2]
    if wedge is None:
        half_h = np.full_like(z, 12.0)
    else:
        hp, ha = wedge
        half_h = (hp + (ha - hp) * (15.0 - y) / 30.0) / 2.0
    body = (np.abs(x) <= 20) & (np.abs(y) <= 15) & (np.abs(z) <= half_h)
    post = (np.abs(x) <= 10) & (y > 15) & (y <= 35) & (np.abs(z) <= 10) if posterior else False
    depth = np.minimum.reduce([20 - np.abs(x), 15 - np.abs(y), half_h - np.abs(z)])
    ct = np.zeros(x.shape, dtype=np.int16)
    ct[body] = np.where(depth[body] < 1.0, 1000, 200)
    ct[post & ~body] = 500
    labels = np.where(body | post, L1, 0).astype(np.uint8)
    bodies = np.where(body, L1, 0).astype(np.uint8)
    return ct, labels, bodies


def _measure(affine, ct, labels, bodies, **kw):
    volumes = (Volume(a, affine) for a in (ct, labels, bodies))
    return measure_vertebrae(*volumes, **kw)


@pytest.mark.parametrize(
    "deg_x,deg_z,flip", [(0, 0, (1, 1, 1)), (15, 30, (-1, 1, 1)), (-10, 90, (1, -1, -1))]
)
def test_box_volume_height_and_trabecular_hu(deg_x, deg_z, flip):
    affine, pts = make_grid(deg_x=deg_x, deg_z=deg_z, flip=flip)
    ct, labels, bodies = vertebra_phantom(pts)
    (m,) = _measure(affine, ct, labels, bodies)
    voxel_mm3 = float(np.prod(SPACING))
    assert m.level == "L1" and m.label_value == L1
    assert m.voxel_count == int((labels == L1).sum())
    # exact to the voxel count; the analytic volume 40*30*24 + 20*20*20 mm3 to discretisation
    assert m.volume_ml == pytest.approx(m.voxel_count * voxel_mm3 / 1000.0, rel=1e-9)
    assert m.volume_ml == pytest.approx(36.8, rel=0.03)
    # heights of a box: 24 mm everywhere, within one voxel step along the axis (<= 1.66 mm)
    for h in (m.body_height_anterior_mm, m.body_height_middle_mm, m.body_height_posterior_mm):
        assert h == pytest.approx(24.0, abs=1.7)
    assert m.height_ratio == pytest.approx(1.0, abs=0.08)
    # the trabecular core sees only the painted core value, never the 1000 HU cortex
    assert m.trabecular_mean_hu == pytest.approx(200.0)
    assert m.trabecular_median_hu == pytest.approx(200.0)
    assert m.trabecular_voxels > 1000
    # centroid in LPS: the vertebra's centre of mass lies behind (+y) the body centred at 0
    expected_y = (28800 * 0 + 8000 * 25.0) / 36800
    assert m.centroid_lps_mm[1] == pytest.approx(expected_y, abs=0.5)
    assert abs(m.centroid_lps_mm[0]) < 0.5 and abs(m.centroid_lps_mm[2]) < 0.5
    assert not m.touches_border


def test_erosion_is_physical_on_anisotropic_grid():
    affine, pts = make_grid(deg_x=0, deg_z=0, flip=(1, 1, 1))
    ct, labels, bodies = vertebra_phantom(pts)
    (m3,) = _measure(affine, ct, labels, bodies, erosion_mm=3.0)
    (m6,) = _measure(affine, ct, labels, bodies, erosion_mm=6.0)
    # core of a 40 x 30 x 24 box eroded by e mm ~ (40-2e)(30-2e)(24-2e) mm3
    voxel_mm3 = float(np.prod(SPACING))
    assert m3.trabecular_voxels * voxel_mm3 == pytest.approx(34 * 24 * 18, rel=0.15)
    assert m6.trabecular_voxels * voxel_mm3 == pytest.approx(28 * 18 * 12, rel=0.15)


def test_wedge_body_gives_anterior_posterior_ratio():
    affine, pts = make_grid()
    ct, labels, bodies = vertebra_phantom(pts, wedge=(24.0, 14.0))
    (m,) = _measure(affine, ct, labels, bodies)
    # heights at the centres of the thirds of a linear wedge: y = -10, 0, +10
    h = lambda y: 24.0 + (14.0 - 24.0) * (15.0 - y) / 30.0  # noqa: E731
    assert m.body_height_anterior_mm == pytest.approx(h(-10), abs=1.7)
    assert m.body_height_middle_mm == pytest.approx(h(0), abs=1.7)
    assert m.body_height_posterior_mm == pytest.approx(h(10), abs=1.7)
    assert m.height_ratio == pytest.approx(h(-10) / h(10), abs=0.06)
    assert m.body_height_anterior_mm < m.body_height_middle_mm < m.body_height_posterior_mm


def test_anterior_falls_back_to_patient_anterior_without_posterior_elements():
    affine, pts = make_grid()
    ct, labels, bodies = vertebra_phantom(pts, wedge=(24.0, 14.0), posterior=False)
    (m,) = _measure(affine, ct, labels, bodies)
    assert m.body_height_anterior_mm < m.body_height_posterior_mm  # anterior = -y in LPS


def test_given_axis_is_used_and_its_sign_does_not_matter():
    affine, pts = make_grid()
    ct, labels, bodies = vertebra_phantom(pts)
    (up,) = _measure(affine, ct, labels, bodies, axis_lps={L1: (0.0, 0.0, 2.0)})
    (down,) = _measure(affine, ct, labels, bodies, axis_lps={L1: (0.0, 0.0, -1.0)})
    assert up.body_height_middle_mm == pytest.approx(down.body_height_middle_mm)
    assert up.body_height_middle_mm == pytest.approx(24.0, abs=1.7)
    # along x the "height" is the 40 mm width
    (side,) = _measure(affine, ct, labels, bodies, axis_lps={L1: (1.0, 0.0, 0.0)})
    assert side.body_height_middle_mm == pytest.approx(40.0, abs=1.7)


def test_noise_voxels_do_not_inflate_heights():
    affine, pts = make_grid()
    ct, labels, bodies = vertebra_phantom(pts)
    rng = np.random.default_rng(0)
    # a few stray body voxels 15-20 mm above the body
    stray = np.argwhere((np.abs(pts[..., 2] - 30) < 1) & (np.abs(pts[..., 0]) < 15))
    for i, j, k in stray[rng.choice(len(stray), 5, replace=False)]:
        bodies[i, j, k] = labels[i, j, k] = L1
    (m,) = _measure(affine, ct, labels, bodies)
    assert m.body_height_middle_mm == pytest.approx(24.0, abs=1.7)
    assert m.body_height_anterior_mm == pytest.approx(24.0, abs=1.7)


def test_small_body_has_no_trabecular_hu_and_border_is_flagged(caplog):
    affine, pts = make_grid(shape=(40, 40, 20))
    ct = np.full((40, 40, 20), 100, dtype=np.int16)
    labels = np.zeros((40, 40, 20), dtype=np.uint8)
    labels[10:14, 10:14, 0:4] = 21  # L2, 2.8 x 3.6 x 6.4 mm, on the first slice
    labels[20:30, 20:30, 8:12] = 101  # an unidentified vertebra inside the image
    bodies = labels.copy()
    with caplog.at_level("WARNING"):
        by_value = {m.label_value: m for m in _measure(affine, ct, labels, bodies)}
    small = by_value[21]
    assert small.level == "L2" and small.touches_border
    assert small.trabecular_mean_hu is None and small.trabecular_median_hu is None
    assert small.trabecular_voxels < MIN_TRABECULAR_VOXELS
    assert "trabecular HU not reported" in caplog.text
    assert by_value[101].level == "vertebra1" and not by_value[101].touches_border


def test_missing_body_and_grid_mismatch():
    affine, pts = make_grid(shape=(30, 30, 20))
    ct = np.zeros((30, 30, 20), dtype=np.int16)
    labels = np.zeros((30, 30, 20), dtype=np.uint8)
    labels[5:25, 5:25, 5:15] = 8
    (m,) = _measure(affine, ct, labels, np.zeros_like(labels))
    assert m.level == "T1" and m.body_height_middle_mm is None and m.height_ratio is None
    assert m.trabecular_voxels == 0
    other = affine.copy()
    other[0, 3] += 5
    with pytest.raises(ValueError, match="one voxel grid"):
        measure_vertebrae(Volume(ct, affine), Volume(labels, other), Volume(labels, affine))


def test_the_record_is_the_registry_of_quantities():
    """Each quantity module adds its fields in registry order; the record's fields are those
    the measure JSON and the cohort table have always had."""
    import dataclasses

    from spine_idc.measure import MEASUREMENTS, VertebraMeasurement

    names = [f.name for f in dataclasses.fields(VertebraMeasurement)]
    assert names == ["level", "label_value"] + [f[0] for q in MEASUREMENTS for f in q.FIELDS]
    assert names == [
        "level", "label_value", "voxel_count", "volume_ml", "trabecular_mean_hu",
        "trabecular_median_hu", "trabecular_voxels", "centroid_lps_mm",
        "body_height_anterior_mm", "body_height_middle_mm", "body_height_posterior_mm",
        "height_ratio", "touches_border",
    ]
    for q in MEASUREMENTS:
        assert callable(q.measure) and callable(q.sr_items) and q.__doc__
