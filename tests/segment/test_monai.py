"""The ``monai`` backend: model folders, the grid round trip, post-processing on the device, the
shard pipeline, and a network trained here on phantoms that then labels phantoms it never saw,
through the whole workflow into the SEG."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

from spine_idc import coding, layout  # noqa: E402
from spine_idc.config import SegmentConfig  # noqa: E402
from spine_idc.errors import ConfigError  # noqa: E402
from spine_idc.phantom import make_phantom, spec_for_seed  # noqa: E402
from spine_idc.pipeline import segment_runner  # noqa: E402
from spine_idc.segment import get_backend  # noqa: E402
from spine_idc.segment.networks.labelmap import largest_components, level_value  # noqa: E402
from spine_idc.segment.networks.model import (  # noqa: E402
    keep_largest_components,
    labels_to_network,
    load_model,
    network_grid,
    to_native,
    to_network,
)
from spine_idc.volume import read_nifti, write_nifti  # noqa: E402

from support.trained_bundle import HELD_BACK, LEVELS, bundle  # noqa: E402,F401  (a fixture)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


# --- names, model folders --------------------------------------------------------------------

def test_channel_names_map_to_levels():
    assert level_value("L1") == 20
    assert level_value("vertebrae_L5") == 24  # TotalSegmentator / MONAI whole-body names
    assert level_value("vertebrae_C1") == 1
    assert level_value("T12 vertebra") == 19
    assert level_value("sacrum") == coding.SACRUM_VALUE
    assert level_value("vertebrae_S1") == coding.S1_VALUE
    assert level_value("spinal_cord") == coding.SPINAL_CORD_VALUE
    assert level_value("liver") is None and level_value("background") is None


def test_bundle_is_read_with_its_own_settings(bundle):
    spec = load_model(bundle)
    assert spec.spacing_mm == (6.0, 6.0, 6.0) and spec.roi_size == (48, 48, 48)
    assert spec.orientation == "RAS"
    assert spec.intensity == [{"kind": "range", "a_min": -1000.0, "a_max": 1500.0, "b_min": 0.0,
                               "b_max": 1.0, "clip": True}]
    assert spec.channels == {1: 20, 2: 21, 3: 22, 4: 23, 5: 24, 6: coding.SACRUM_VALUE}
    assert spec.n_channels == 7
    assert len(spec.sha256) == 64
    assert spec.build_network() is not None


def test_plain_description_gives_the_same_labels_as_the_bundle(bundle, tmp_path):
    inference = json.loads((bundle / "configs" / "inference.json").read_text())
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    net = dict(inference["network_def"])
    plain = tmp_path / "plain"
    plain.mkdir()
    shutil.copy(bundle / "models" / "model.pt", plain / "weights.pt")
    (plain / "model.json").write_text(json.dumps({
        "architecture": net.pop("_target_"), "network": net, "checkpoint": "weights.pt",
        "spacing_mm": [6, 6, 6], "roi_size": [48, 48, 48], "orientation": "RAS",
        "intensity": {"kind": "range", "a_min": -1000, "a_max": 1500, "b_min": 0, "b_max": 1,
                      "clip": True},
        "labels": meta["network_data_format"]["outputs"]["pred"]["channel_def"]}))
    ct = make_phantom(spec_for_seed(HELD_BACK[0], levels=LEVELS)).ct
    a = get_backend("monai", model=str(bundle), device="cpu").segment(ct, series_key="a")
    b = get_backend("monai", model=str(plain), device="cpu").segment(ct, series_key="b")
    assert a.labels.array.any() and np.array_equal(a.labels.array, b.labels.array)


def test_unusable_model_folders_are_refused_before_any_series(bundle, tmp_path):
    with pytest.raises(ConfigError, match="segment.model is empty"):
        get_backend("monai", model="")
    with pytest.raises(ConfigError, match="does not exist"):
        get_backend("monai", model=str(tmp_path / "nowhere"))
    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    (broken / "models" / "model.pt").unlink()
    with pytest.raises(ConfigError, match="weights .* are missing"):
        get_backend("monai", model=str(broken))
    # weights of another network
    torch.save({"w": torch.zeros(3)}, broken / "models" / "model.pt")
    with pytest.raises(ConfigError, match="do not fit the network"):
        get_backend("monai", model=str(broken))
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    meta["network_data_format"]["outputs"]["pred"]["channel_def"] = {"0": "background", "1": "liver"}
    (broken / "configs" / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="no output channel is a vertebra"):
        load_model(broken)
    with pytest.raises(ConfigError, match="no CUDA device") if not torch.cuda.is_available() \
            else pytest.raises(ConfigError, match="unknown segmentation backend"):
        get_backend("monai" if not torch.cuda.is_available() else "nope", model=str(bundle), device="cuda")


def test_bundle_references_and_intensity_chains_are_resolved(bundle, tmp_path):
    """As MONAI's whole-body CT bundle states them: spacing through a reference to an
    expression, z-score over non-zero voxels then min-max to [-1, 1], no clip given."""
    other = tmp_path / "refs"
    shutil.copytree(bundle, other)
    config = json.loads((other / "configs" / "inference.json").read_text())
    config["highres"] = True
    config["pixdim"] = "$[6.0, 6.0, 6.0] if @highres else [3.0, 3.0, 3.0]"
    config["preprocessing"]["transforms"][3]["pixdim"] = "@pixdim"
    config["preprocessing"]["transforms"][4] = {"_target_": "NormalizeIntensityd", "keys": "image",
                                                "nonzero": True}
    config["preprocessing"]["transforms"].append(
        {"_target_": "ScaleIntensityd", "keys": "image", "minv": -1.0, "maxv": 1.0})
    (other / "configs" / "inference.json").write_text(json.dumps(config))
    spec = load_model(other)
    assert spec.spacing_mm == (6.0, 6.0, 6.0)
    assert spec.intensity == [{"kind": "zscore", "nonzero": True},
                              {"kind": "minmax", "minv": -1.0, "maxv": 1.0}]
    assert spec.identity() != load_model(bundle).identity()  # same weights, other preprocessing
    ct = make_phantom(spec_for_seed(0)).ct
    g = network_grid(ct.array.shape, ct.affine, spec.spacing_mm)
    x = to_network(ct.array, g, spec.intensity, "cpu")
    assert -1.0 - 1e-5 <= float(x.min()) and float(x.max()) <= 1.0 + 1e-5
    # an intensity transform we do not implement is refused, not silently replaced
    config["preprocessing"]["transforms"][-1] = {"_target_": "ScaleIntensityRangePercentilesd",
                                                 "keys": "image", "lower": 1, "upper": 99}
    (other / "configs" / "inference.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="ScaleIntensityRangePercentilesd is not supported"):
        load_model(other)


def test_wrapped_checkpoints_load(bundle, tmp_path):
    other = tmp_path / "wrapped"
    shutil.copytree(bundle, other)
    state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3},
               other / "models" / "model.pt")
    ct = make_phantom(spec_for_seed(HELD_BACK[0], levels=LEVELS)).ct
    a = get_backend("monai", model=str(bundle), device="cpu").segment(ct, series_key="a")
    b = get_backend("monai", model=str(other), device="cpu").segment(ct, series_key="b")
    assert np.array_equal(a.labels.array, b.labels.array)


# --- grids --------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 5, 9])
def test_network_grid_keeps_physical_positions(seed):
    """A bright voxel lands where it is in the patient, whatever the stored orientation."""
    ph = make_phantom(spec_for_seed(seed))
    ct = ph.ct
    arr = np.full(ct.array.shape, -1000, np.int16)
    idx = tuple(int(n * f) for n, f in zip(arr.shape, (0.3, 0.6, 0.7)))
    arr[idx] = 3000
    g = network_grid(arr.shape, ct.affine, ct.spacing, "RAS")  # no resampling: exact
    x = to_network(arr, g, {"kind": "range", "a_min": -1000, "a_max": 3000}, "cpu")[0, 0].numpy()
    hit = np.unravel_index(np.argmax(x), x.shape)
    want = ct.affine @ np.r_[idx, 1.0]
    got = g.affine @ np.r_[hit, 1.0]
    assert np.allclose(want, got, atol=1e-3), (want, got)
    assert np.all(np.diag(g.affine)[:3] > 0)  # RAS: every axis increasing
    # coarser grid: a 12 mm ball there has its centre within a fraction of a coarse voxel
    ijk = np.indices(arr.shape).reshape(3, -1).T
    mm = ijk @ ct.affine[:3, :3].T + ct.affine[:3, 3]
    ball = (np.linalg.norm(mm - want[:3], axis=1) <= 12.0).reshape(arr.shape)
    arr = np.where(ball, 3000, -1000).astype(np.int16)
    g6 = network_grid(arr.shape, ct.affine, (6.0, 6.0, 6.0))
    x6 = to_network(arr, g6, {"kind": "range", "a_min": -1000, "a_max": 3000}, "cpu")[0, 0].numpy()
    centre = np.argwhere(x6 > 0.5).mean(axis=0)
    assert np.linalg.norm((g6.affine @ np.r_[centre, 1.0])[:3] - want[:3]) < 1.5


@pytest.mark.parametrize("seed", [0, 1, 5, 9])
def test_labels_go_to_the_network_grid_and_back(seed):
    ph = make_phantom(spec_for_seed(seed))
    truth = ph.labels.array
    same = network_grid(truth.shape, ph.ct.affine, ph.ct.spacing)
    back = to_native(torch.from_numpy(labels_to_network(truth.astype(np.int64), same)), same)
    assert np.array_equal(back, truth)  # same spacing: exact
    coarse = network_grid(truth.shape, ph.ct.affine, (3.0, 3.0, 3.0))
    back = to_native(torch.from_numpy(labels_to_network(truth.astype(np.int64), coarse)), coarse)
    for v in np.unique(truth)[1:]:
        assert dice(back == v, truth == v) > 0.8, v


def test_largest_component_on_the_device_matches_scipy():
    rng = np.random.default_rng(3)
    labels = np.zeros((40, 36, 30), np.int16)
    for v in (1, 2, 20, 26):
        for _ in range(4):  # several blobs per value, of different sizes
            c = rng.integers(4, 26, 3)
            r = rng.integers(1, 5, 3)
            labels[c[0] - r[0]:c[0] + r[0], c[1] - r[1]:c[1] + r[1], c[2] - r[2]:c[2] + r[2]] = v
    labels[5:7, 5:7, 5:7] = 20  # a speck
    labels[30:33, 2:30, 10] = 2  # a thin sheet: connected only through itself
    want = largest_components(labels.astype(np.uint8).copy())
    got = keep_largest_components(torch.from_numpy(labels), [1, 2, 20, 26], method="propagate").numpy()
    assert np.array_equal(got, want)
    assert np.array_equal(keep_largest_components(torch.from_numpy(labels), [1, 2, 20, 26]).numpy(), want)
    assert (got == 20).sum() < (labels == 20).sum()  # something was removed
    # a level that does not settle within the step budget is labelled on the CPU: same answer
    capped = keep_largest_components(torch.from_numpy(labels), [1, 2, 20, 26], max_steps=2,
                                     method="propagate").numpy()
    assert np.array_equal(capped, want)


# --- the shard pipeline -----------------------------------------------------------------------

def test_a_shard_records_bad_series_and_finishes_the_rest(bundle, tmp_path):
    from spine_idc.outcome import Failure, read_failure, write_failure

    ph = make_phantom(spec_for_seed(HELD_BACK[1], levels=LEVELS))
    jobs = []
    for name in ("good", "upstream", "corrupt", "good2"):
        conv = tmp_path / "convert" / name
        conv.mkdir(parents=True)
        jobs.append(segment_runner.SeriesJob(name, conv, tmp_path / "segment" / name))
    write_nifti(ph.ct, jobs[0].converted / layout.VOLUME)
    write_nifti(ph.ct, jobs[3].converted / layout.VOLUME)
    write_failure(jobs[1].converted, Failure(stage="convert", series_key="upstream",
                                             reason="missing-slices", message="a gap"))
    (jobs[2].converted / layout.VOLUME).write_bytes(b"\x1f\x8b not really gzip")
    seen = []
    results = segment_runner.run(jobs, SegmentConfig.of("monai", model=str(bundle), device="cpu"),
                                done=lambda job, failure: seen.append(job.key))
    assert sorted(seen) == ["corrupt", "good", "good2", "upstream"]
    assert results["good"] is None and results["good2"] is None
    assert results["upstream"].reason == "missing-slices"
    assert results["corrupt"].reason == "segment-error"
    assert results["corrupt"].path.endswith(layout.VOLUME)  # the file to look at
    assert read_failure(jobs[2].out).reason == "segment-error"
    qc = json.loads((jobs[0].out / layout.QC).read_text())
    assert qc["algorithm"]["parameters"]["weights_sha256"] == load_model(bundle).sha256
    assert qc["levels"] == ["L1", "L2", "L3", "L4", "L5", "sacrum"]
    assert np.array_equal(read_nifti(jobs[0].out / layout.LABELS).array,
                          read_nifti(jobs[3].out / layout.LABELS).array)


def test_a_failed_write_leaves_no_older_result_behind(bundle, tmp_path, monkeypatch):
    """Disk trouble while writing: the job stops (a fault of the machine is not the series'),
    nothing is stamped, and no earlier run's labels are left that the next run would take as
    current."""
    import spine_idc.volume
    from spine_idc.errors import MachineFault

    ph = make_phantom(spec_for_seed(HELD_BACK[0], levels=LEVELS))
    conv = tmp_path / "convert" / "s"
    conv.mkdir(parents=True)
    write_nifti(ph.ct, conv / layout.VOLUME)
    job = segment_runner.SeriesJob("s", conv, tmp_path / "segment" / "s")
    job.out.mkdir(parents=True)
    (job.out / layout.LABELS).write_text("an earlier run's result")
    real = spine_idc.volume.write_nifti

    def full_disk(volume, path):
        if "labels" in str(path):
            raise OSError(28, "No space left on device")
        real(volume, path)

    monkeypatch.setattr(spine_idc.volume, "write_nifti", full_disk)
    stamped = []
    with pytest.raises(MachineFault, match="No space left"):
        segment_runner.run([job], SegmentConfig.of("monai", model=str(bundle), device="cpu"),
                          done=lambda j, f: stamped.append(f))
    assert not job.out.exists() and stamped == []


def test_a_missing_model_stops_the_shard_before_any_series(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    conv = tmp_path / "c"
    conv.mkdir()
    job = segment_runner.SeriesJob("s", conv, tmp_path / "s")
    with pytest.raises(ConfigError, match="does not exist"):
        segment_runner.run([job], SegmentConfig.of("monai", model=str(tmp_path / "none")))
    assert not job.out.exists()


# --- the proof: trained here, labels phantoms it never saw, through the workflow ----------

@pytest.mark.slow
def test_trained_bundle_labels_held_back_phantoms_through_the_workflow(bundle, tmp_path):
    import highdicom as hd
    import pydicom

    from support.dicom_series import seg_to_label_map
    from support.workflow_run import _keys, check_outputs, snakemake

    from spine_idc.volume import SeriesInfo

    snakemake(tmp_path, "source=phantom",
              f"phantom={{'count': 2, 'first_seed': {HELD_BACK[0]}, 'levels': ['L1', 'sacrum']}}",
              f"segment={{'backend': 'monai', 'model': '{bundle}', 'device': 'cpu'}}")
    keys = _keys(tmp_path)
    table = check_outputs(tmp_path, keys)
    sha = load_model(bundle).sha256
    for key, seed in zip(sorted(keys), HELD_BACK):
        truth = read_nifti(tmp_path / "resources" / "phantoms" / f"seed-{seed:04d}" / "labels.nii.gz").array
        ds = pydicom.dcmread(tmp_path / "results" / "series" / key / "seg.dcm")
        seg = hd.seg.Segmentation.from_dataset(ds)
        algo = ds.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
        assert sha[:12] in algo.AlgorithmVersion and "monai" in algo.AlgorithmName
        info = SeriesInfo.read(tmp_path / layout.path("convert", key) / layout.SERIES_INFO)
        labels = seg_to_label_map(seg, info)
        assert labels.shape == truth.shape
        scores = {coding.level_for_value(int(v)).name: dice(labels == v, truth == v)
                  for v in np.unique(truth)[1:]}
        # The network works on 6 mm voxels: 0.8 is the most a perfect 6 mm answer scores here.
        assert min(scores.values()) > 0.6, (key, scores)
        rows = table[table["series_key"] == key]
        assert set(rows["level"]) >= {"L1", "L2", "L3", "L4", "L5"}, rows["level"].tolist()


# --- on a GPU (skipped without CUDA: CI has none; run them where a GPU is lent) --------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_cuda
def test_largest_component_on_cuda_matches_the_cpu():
    rng = np.random.default_rng(5)
    labels = torch.from_numpy(rng.integers(0, 4, (48, 40, 32)).astype(np.int16))
    cpu = keep_largest_components(labels, [1, 2, 3])
    gpu = keep_largest_components(labels.cuda(), [1, 2, 3], method="propagate").cpu()
    assert torch.equal(cpu, gpu)


@needs_cuda
def test_cuda_with_mixed_precision_labels_as_the_cpu_does(bundle):
    ct = make_phantom(spec_for_seed(HELD_BACK[0], levels=LEVELS)).ct
    cpu = get_backend("monai", model=str(bundle), device="cpu").segment(ct, series_key="c")
    gpu = get_backend("monai", model=str(bundle), device="cuda", amp=True).segment(ct, series_key="g")
    assert gpu.qc.levels == cpu.qc.levels
    for v in np.unique(cpu.labels.array)[1:]:
        assert dice(gpu.labels.array == v, cpu.labels.array == v) > 0.98, v
    assert gpu.qc.timing_s["infer"] > 0
