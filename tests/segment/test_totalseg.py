"""The ``totalsegmentator`` backend: its label mapping, its weights check and its call.

* The mapping: the checked-in table equals TotalSegmentator's own ``class_map`` (when it is
  installed) and sends every vertebra to its value in :mod:`spine_idc.coding`.
* Missing weights fail at construction -- before a batch starts -- with a message that says
  where they were looked for and how to get them, without touching the network.
* The call: TotalSegmentator and nnU-Net run for real on a phantom CT, on the CPU, with tiny
  hand-made models in its expected folders (``tests/support/totalseg_fixture.py``: they label voxels
  brighter than 200 HU with a chosen class), so the whole path -- the crop model, cropping,
  resampling, nnU-Net's preprocessing and sliding window, undoing it all onto the CT grid, our
  mapping and :func:`~spine_idc.segment.networks.labelmap.finish_labels` -- is exercised without the real
  weights, offline.
* ``totalseg_weights``: the real model on a phantom, run only where the real weights are
  installed (skipped otherwise).
"""

from __future__ import annotations

import logging
import socket
import sys

import numpy as np
import pytest

from spine_idc import coding
from spine_idc.errors import ConfigError, SegmentationError
from spine_idc import segment
from spine_idc.segment.networks import totalseg
from spine_idc.segment.base import QCRecord, SegmentationResult

try:
    import totalsegmentator  # noqa: F401
except ImportError:  # the mapping tests that need no TotalSegmentator still run
    HAVE_TS = False
else:
    HAVE_TS = True

needs_ts = pytest.mark.skipif(not HAVE_TS, reason="TotalSegmentator is not installed")


# --- the mapping -------------------------------------------------------------------------

def test_checked_in_table_maps_every_vertebra_to_its_level():
    mapping = totalseg.value_map(with_cord=True, classes=totalseg.TOTAL_SPINE_CLASSES)
    # C1..L5: TotalSegmentator numbers them 50 (C1) down to 27 (L5); ours run 1..24 the other way
    for i, level in enumerate(coding.LEVELS[:24]):
        ts_value = totalseg.TOTAL_SPINE_CLASSES[f"vertebrae_{level.name}"]
        assert mapping[ts_value] == level.value == i + 1, level.name
    assert mapping[50] == coding.LEVEL_BY_NAME["C1"].value == 1
    assert mapping[43] == coding.LEVEL_BY_NAME["T1"].value == 8
    assert mapping[31] == coding.LEVEL_BY_NAME["L1"].value == 20
    assert mapping[27] == coding.LEVEL_BY_NAME["L5"].value == 24
    assert mapping[26] == coding.S1_VALUE == 29
    assert mapping[25] == coding.SACRUM_VALUE == 26
    assert mapping[79] == coding.SPINAL_CORD_VALUE == 60
    assert len(set(mapping.values())) == len(mapping) == 27  # one-to-one
    # without the cord option the cord is not asked for, and would map to background
    assert 79 not in totalseg.value_map(with_cord=False, classes=totalseg.TOTAL_SPINE_CLASSES)


def test_lookup_table_sends_other_structures_to_background():
    mapping = totalseg.value_map(with_cord=False, classes=totalseg.TOTAL_SPINE_CLASSES)
    lut = totalseg._lookup_table(mapping)
    ts = np.array([0, 5, 25, 26, 27, 31, 43, 50, 79, 92, 117], dtype=np.uint8)  # 5 liver, 92 rib
    assert lut[ts].tolist() == [0, 0, 26, 29, 24, 20, 8, 1, 0, 0, 0]


@needs_ts
def test_checked_in_table_equals_totalsegmentators_class_map():
    from totalsegmentator.map_to_binary import class_map

    total = class_map["total"]
    spine = {name: int(v) for v, name in total.items()
             if name.startswith("vertebrae_") or name in ("sacrum", "spinal_cord")}
    assert spine == totalseg.TOTAL_SPINE_CLASSES  # nothing missing, nothing renumbered
    assert totalseg.spine_classes(with_cord=True) == totalseg.TOTAL_SPINE_CLASSES
    assert totalseg.value_map(with_cord=True) == totalseg.value_map(
        with_cord=True, classes=totalseg.TOTAL_SPINE_CLASSES)


@needs_ts
def test_required_models_follow_totalsegmentators_tables():
    def names(fast, cord):
        return [m[1].split("_")[0] for m in totalseg.required_models(fast, cord)]

    assert names(False, False) == ["Dataset298", "Dataset292"]  # crop model, vertebrae part
    assert names(False, True) == ["Dataset298", "Dataset292", "Dataset294"]  # + the cord's part
    assert names(True, False) == names(True, True) == ["Dataset298", "Dataset297"]


# --- construction: options and the weights check ------------------------------------------

@pytest.fixture
def no_network(monkeypatch):
    """Record (and refuse) any internet connection made in this process (local sockets, which
    multiprocessing uses, pass)."""
    attempts = []
    connect, connect_ex = socket.socket.connect, socket.socket.connect_ex

    def guard(original):
        def call(self, address, *args, **kwargs):
            if self.family in (socket.AF_INET, socket.AF_INET6):
                attempts.append(address)
                raise OSError(f"test: no network ({address})")
            return original(self, address, *args, **kwargs)
        return call

    monkeypatch.setattr(socket.socket, "connect", guard(connect))
    monkeypatch.setattr(socket.socket, "connect_ex", guard(connect_ex))
    return attempts


@needs_ts
@pytest.mark.parametrize("fast,task", [(False, "total"), (True, "total_fast")])
def test_missing_weights_fail_at_construction_with_how_to(tmp_path, monkeypatch, no_network,
                                                          fast, task):
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path))
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    with pytest.raises(ConfigError) as err:
        totalseg.TotalSegmentatorBackend(fast=fast, device="cpu")
    text = str(err.value)
    assert str(tmp_path / "nnunet" / "results") in text  # where it looked
    assert "Dataset298_TotalSegmentator_total_6mm" in text  # what is missing
    assert ("Dataset297" in text) == fast and ("Dataset292" in text) != fast
    assert f"totalseg_download_weights -t {task}" in err.value.hint  # how to get them
    assert "TOTALSEG_HOME_DIR" in err.value.hint
    assert no_network == []
    assert list(tmp_path.iterdir()) == []  # nothing downloaded, nothing created


@needs_ts
def test_incomplete_weights_folder_counts_as_missing(tmp_path, monkeypatch):
    from support.totalseg_fixture import make_home

    make_home(tmp_path)
    ckpt = next(tmp_path.glob("nnunet/results/Dataset297*/*/fold_0/checkpoint_final.pth"))
    ckpt.unlink()
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    with pytest.raises(ConfigError, match="Dataset297.*incomplete"):
        totalseg.TotalSegmentatorBackend(fast=True, device="cpu", home_dir=str(tmp_path))


@needs_ts
def test_home_dir_option_and_env_var_are_both_obeyed(tmp_path, monkeypatch):
    from support.totalseg_fixture import make_home

    make_home(tmp_path / "home")
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "empty"))
    totalseg.TotalSegmentatorBackend(fast=True, device="cpu", home_dir=str(tmp_path / "home"))
    assert totalseg.os.environ["TOTALSEG_HOME_DIR"] == str(tmp_path / "empty")  # restored
    with pytest.raises(ConfigError):
        totalseg.TotalSegmentatorBackend(fast=True, device="cpu")
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "home"))
    b = totalseg.TotalSegmentatorBackend(fast=True, device="cpu")
    assert b.name == "totalsegmentator"
    assert b.version.startswith("TotalSegmentator 2.")


@needs_ts
def test_device_option(tmp_path, monkeypatch, caplog):
    import torch

    from support.totalseg_fixture import make_home

    make_home(tmp_path)
    with pytest.raises(ConfigError, match="segment.device"):
        totalseg.TotalSegmentatorBackend(fast=True, device="tpu", home_dir=str(tmp_path))
    caplog.set_level(logging.INFO, logger="spine_idc.segment.networks.totalseg")
    b = totalseg.TotalSegmentatorBackend(fast=True, home_dir=str(tmp_path))
    if torch.cuda.is_available():
        assert b.device == "gpu"
    else:
        assert b.device == "cpu"
        assert "runs on the CPU" in caplog.text
    b = totalseg.TotalSegmentatorBackend(fast=True, device="cuda:0", home_dir=str(tmp_path))
    assert b.device == "gpu:0"


def test_without_totalsegmentator_construction_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "totalsegmentator.python_api", None)  # import fails
    with pytest.raises(ConfigError, match="needs the TotalSegmentator package") as err:
        totalseg.TotalSegmentatorBackend()
    assert "pip install TotalSegmentator" in err.value.hint


def test_registry_entry(tmp_path):
    module, attr = segment.REGISTRY["totalsegmentator"].split(":")
    assert (module, attr) == ("spine_idc.segment.networks.totalseg", "TotalSegmentatorBackend")
    with pytest.raises(ConfigError, match="does not take"):
        segment.get_backend("totalsegmentator", spacing_mm=1.0)
    if HAVE_TS:
        from support.totalseg_fixture import make_home

        backend = segment.get_backend("totalsegmentator", fast=True, device="cpu", with_cord=False,
                                   home_dir=str(make_home(tmp_path)))
        assert isinstance(backend, segment.Backend) and backend.name == "totalsegmentator"


# --- the call, with tiny fake models ------------------------------------------------------

@pytest.fixture(scope="session")
def phantom():
    from spine_idc.phantom import make_phantom, spec_for_seed

    return make_phantom(spec_for_seed(0, levels=("L1", "sacrum")))


@pytest.fixture(scope="module")
def fake_home(tmp_path_factory):
    pytest.importorskip("totalsegmentator")
    from support.totalseg_fixture import make_home

    # usage_stats=True is what TotalSegmentator writes by default: the backend must still not post
    return make_home(tmp_path_factory.mktemp("totalseg_home"), usage_stats=True)


@needs_ts
def test_call_runs_totalsegmentator_and_maps_onto_the_ct_grid(fake_home, phantom, tmp_path,
                                                             monkeypatch, no_network):
    monkeypatch.chdir(tmp_path)  # nothing may be written into the working directory
    backend = totalseg.TotalSegmentatorBackend(fast=True, device="cpu", home_dir=str(fake_home))
    result = backend.segment(phantom.ct, series_key="1.2.3.4")

    assert isinstance(result, SegmentationResult)
    assert isinstance(result.qc, QCRecord)
    assert result.labels.same_grid(phantom.ct) and result.bodies.same_grid(phantom.ct)
    assert result.labels.array.dtype == np.uint8
    # the fake 3 mm model labels bone "vertebrae_L1" (TotalSegmentator 31): ours is 20
    assert set(np.unique(result.labels.array)) == {0, coding.LEVEL_BY_NAME["L1"].value}
    assert set(np.unique(result.bodies.array)) <= {0, 20}
    assert result.qc.levels == ["L1"] and result.qc.backend == "totalsegmentator"
    assert result.qc.version == backend.version and result.qc.series_key == "1.2.3.4"
    assert "totalsegmentator" in result.qc.timing_s
    # the labels lie on the CT's bone, voxel for voxel: 95 % of them are above 100 HU, against
    # 4 % of the CT; mirrored along any axis 33-67 %, shifted by 3.75 mm (3 columns) 78 %
    hu = phantom.ct.array[result.labels.array > 0]
    assert hu.size > 10_000
    assert np.mean(phantom.ct.array > 100) < 0.1
    assert np.mean(hu > 100) > 0.9, np.mean(hu > 100)
    # the fake model labels all bone one level, and finish_labels keeps the largest component:
    # the phantom's spine (L1-L5 and sacrum touch through the fake model's coarse 3 mm grid)
    assert set(np.unique(phantom.labels.array[result.labels.array > 0])) >= {20, 24, 26}
    assert no_network == []  # no usage statistics, no download
    assert list(tmp_path.iterdir()) == []


@needs_ts
def test_call_without_spine_raises_no_spine(phantom, tmp_path, no_network):
    from support.totalseg_fixture import make_home

    # the crop model finds only "liver": TotalSegmentator returns an empty map for the subset
    home = make_home(tmp_path / "home", crop_class="liver", class_name="liver")
    backend = totalseg.TotalSegmentatorBackend(fast=True, device="cpu", home_dir=str(home))
    with pytest.raises(SegmentationError) as err:
        backend.segment(phantom.ct, series_key="9.9")
    assert err.value.reason == "no-spine" and err.value.series == "9.9"
    assert no_network == []


# --- the real model, where its weights are installed ---------------------------------------

def _real_mode() -> bool | None:
    """``fast`` for the installed real weights (default mode preferred); None if none are."""
    if not HAVE_TS:
        return None
    for fast in (False, True):
        if not totalseg.missing_weights(fast, with_cord=False):
            # the fake models of the tests above are tiny; real checkpoints are >100 MB
            ckpt = next(totalseg.weights_dir().glob("Dataset298*/*/fold_0/checkpoint_final.pth"))
            if ckpt.stat().st_size > 10_000_000:
                return fast
    return None


@pytest.mark.totalseg_weights
def test_real_model_on_a_phantom(phantom):
    fast = _real_mode()
    if fast is None:
        pytest.skip("TotalSegmentator's real weights are not installed "
                    "(totalseg_download_weights -t total, or -t total_fast)")
    backend = totalseg.TotalSegmentatorBackend(fast=fast)
    result = backend.segment(phantom.ct, series_key="phantom")
    assert result.labels.same_grid(phantom.ct)
    values = set(np.unique(result.labels.array)) - {0}
    assert values <= {lv.value for lv in coding.LABEL_TABLE}
    # a synthetic phantom is not a patient: ask only that some lumbar vertebra is found where
    # the phantom has one, and that the labels lie on its vertebrae
    assert values & {20, 21, 22, 23, 24}, result.qc.levels
    on_spine = phantom.labels.array[result.labels.array > 0] > 0
    assert on_spine.mean() > 0.5
