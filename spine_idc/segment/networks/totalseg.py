"""The ``totalsegmentator`` backend: TotalSegmentator (v2, task ``total``) restricted to the spine.

TotalSegmentator's Python API is called with its ``roi_subset``: the 26 spine classes of the
``total`` task (C1..L5, S1, sacrum) and, on request, the spinal cord.  With a ``roi_subset`` it
first runs its 6 mm model (Dataset298) on the whole CT to find those structures, crops around
them and runs only the model parts that hold them at full resolution:

=============  ==============================================  =====================
mode           models run                                      ``totalseg_download_weights -t``
=============  ==============================================  =====================
default        298 (crop, 6 mm), 292 vertebrae part (1.5 mm)   ``total``
               + 294 (the part that holds the cord) with cord
``fast``       298 (crop, 6 mm), 297 whole ``total`` (3 mm)    ``total_fast``
=============  ==============================================  =====================

Its label values (the ``total`` class map) are translated to ours (:mod:`spine_idc.coding`):
vertebrae C1..L5 to 1..24, ``vertebrae_S1`` to :data:`~spine_idc.coding.S1_VALUE`, ``sacrum``
to 26 and ``spinal_cord`` to :data:`~spine_idc.coding.SPINAL_CORD_VALUE`.  The table is read
from TotalSegmentator's own ``class_map`` when it is installed; :data:`TOTAL_SPINE_CLASSES` is
a checked-in copy (tests keep the two equal) so that the mapping can be read and checked
without it.  The rest (one component per level, order, bodies, QC) is
:func:`~spine_idc.segment.networks.labelmap.finish_labels`, shared with the other network backends.

Weights
-------
TotalSegmentator downloads its weights itself, on first use, into ``~/.totalsegmentator``
(``TOTALSEG_HOME_DIR``; the weights alone can be moved with ``TOTALSEG_WEIGHTS_PATH``).  A
batch must not try that from a compute node (often offline) once per series, so the backend
checks at construction that every model folder the run needs is there and has its checkpoint,
and raises :class:`~spine_idc.errors.ConfigError` saying where it looked and how to get them
otherwise: the workflow builds the backend before the batch starts.  When they are there,
segmenting touches no network: TotalSegmentator finds the folders and downloads nothing, and
its anonymous usage statistics (an HTTP POST after each prediction unless its config says
``"send_usage_stats": false``) are switched off for our calls.

Over 400 lines: TotalSegmentator's class table, its API call, the weights' discovery and
the label mapping are one backend; splitting them would spread one external package's
details over several files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import io
import logging
import os
import re
import time
from pathlib import Path

import numpy as np

from ... import coding
from ...errors import ConfigError, SegmentationError
from ...volume import Volume
from ..base import Declaration, Resources, SegmentationResult
from .labelmap import finish_labels, level_value

log = logging.getLogger(__name__)

#: TotalSegmentator's task; its v2 class numbering is what :data:`TOTAL_SPINE_CLASSES` copies.
TASK = "total"
#: Checked-in copy of the spine rows of TotalSegmentator's ``class_map["total"]`` (v2; checked
#: against the installed package by ``tests/segment/test_totalseg.py``): class name -> label value.
TOTAL_SPINE_CLASSES: dict[str, int] = {
    "sacrum": 25,
    "vertebrae_S1": 26,
    "vertebrae_L5": 27, "vertebrae_L4": 28, "vertebrae_L3": 29, "vertebrae_L2": 30,
    "vertebrae_L1": 31,
    "vertebrae_T12": 32, "vertebrae_T11": 33, "vertebrae_T10": 34, "vertebrae_T9": 35,
    "vertebrae_T8": 36, "vertebrae_T7": 37, "vertebrae_T6": 38, "vertebrae_T5": 39,
    "vertebrae_T4": 40, "vertebrae_T3": 41, "vertebrae_T2": 42, "vertebrae_T1": 43,
    "vertebrae_C7": 44, "vertebrae_C6": 45, "vertebrae_C5": 46, "vertebrae_C4": 47,
    "vertebrae_C3": 48, "vertebrae_C2": 49, "vertebrae_C1": 50,
    "spinal_cord": 79,
}
CORD_CLASS = "spinal_cord"
#: The model TotalSegmentator runs first to crop around a ``roi_subset`` (hard-coded in its
#: ``python_api.totalsegmentator``, as is its trainer), and the plans all ``total`` models use.
CROP_TASK_ID = 298
CROP_TRAINER = "nnUNetTrainer_4000epochs_NoMirroring"
PLANS = "nnUNetPlans"
CONFIGURATION = "3d_fullres"
CHECKPOINT = "checkpoint_final.pth"
_DEVICE = re.compile(r"^(auto|cpu|gpu|cuda|mps|(gpu|cuda):\d+)$")
_VERTEBRA_VALUES = frozenset(lv.value for lv in coding.LABEL_TABLE if lv.is_vertebra)


def spine_classes(with_cord: bool = False) -> dict[str, int]:
    """Spine class name -> TotalSegmentator label value in the ``total`` task.

    Read from the installed TotalSegmentator's ``class_map`` (the numbering its output uses);
    the checked-in :data:`TOTAL_SPINE_CLASSES` when it is not installed.
    """
    try:
        from totalsegmentator.map_to_binary import class_map
    except ImportError:
        table = dict(TOTAL_SPINE_CLASSES)
    else:
        table = {name: int(v) for v, name in class_map[TASK].items() if name in TOTAL_SPINE_CLASSES}
    if not with_cord:
        table.pop(CORD_CLASS, None)
    return table


def value_map(with_cord: bool = False, classes: dict[str, int] | None = None) -> dict[int, int]:
    """TotalSegmentator label value -> our label value (:mod:`spine_idc.coding`).

    ``classes`` (name -> TotalSegmentator value) defaults to :func:`spine_classes`.
    """
    if classes is None:
        classes = spine_classes(with_cord)
    elif not with_cord:
        classes = {k: v for k, v in classes.items() if k != CORD_CLASS}
    out = {}
    for name, ts_value in classes.items():
        ours = level_value(name)
        if ours is None:  # a spine class we have no row for: a bug in this table, not data
            raise RuntimeError(f"no spine-idc label for TotalSegmentator class {name!r}")
        out[ts_value] = ours
    return out


def _lookup_table(mapping: dict[int, int]) -> np.ndarray:
    lut = np.zeros(256, dtype=np.uint8)  # TotalSegmentator writes uint8 label maps
    for ts_value, ours in mapping.items():
        lut[ts_value] = ours
    return lut


def required_models(fast: bool, with_cord: bool) -> list[tuple[int, str, str]]:
    """The models a run needs, as (task id, folder name, trainer), crop model first.

    Follows what TotalSegmentator does with a ``roi_subset``: the crop model, then in ``fast``
    mode the 3 mm whole model, otherwise only the 1.5 mm parts that hold a requested class.
    Needs TotalSegmentator (ids, folders and trainers are read from its tables).
    """
    from totalsegmentator.map_tasks_config import TASK_CONFIGS, TASK_ID_WEIGHTS_CONFIGS
    from totalsegmentator.map_to_binary import class_map_5_parts, map_taskid_to_partname_ct

    ids: list[tuple[int, str]] = [(CROP_TASK_ID, CROP_TRAINER)]
    mode = TASK_CONFIGS[TASK]["sub_modes"]["fast" if fast else "default"]
    wanted = set(spine_classes(with_cord))
    if isinstance(mode["task_id"], list):
        ids += [(tid, mode["trainer"]) for tid in mode["task_id"]
                if wanted & set(class_map_5_parts[map_taskid_to_partname_ct[tid]].values())]
    else:
        ids.append((mode["task_id"], mode["trainer"]))

    def folder(tid: int) -> str:
        info = TASK_ID_WEIGHTS_CONFIGS[tid]
        rel = info.get("rel_path")
        return str(Path(rel) / info["foldername"]) if rel else info["foldername"]

    return [(tid, folder(tid), trainer) for tid, trainer in ids]


def weights_dir() -> Path:
    """Where TotalSegmentator looks for (and would download) its weights, as it decides it:
    ``$TOTALSEG_WEIGHTS_PATH``, else ``$TOTALSEG_HOME_DIR/nnunet/results``, else
    ``~/.totalsegmentator/nnunet/results``."""
    from totalsegmentator.config import get_weights_dir

    return Path(get_weights_dir())


def missing_weights(fast: bool, with_cord: bool) -> list[str]:
    """Model folders (relative to :func:`weights_dir`) absent or without their checkpoint."""
    root = weights_dir()
    missing = []
    for _tid, folder, trainer in required_models(fast, with_cord):
        ckpt = root / folder / f"{trainer}__{PLANS}__{CONFIGURATION}" / "fold_0" / CHECKPOINT
        if not ckpt.is_file():
            # A folder without its checkpoint (an interrupted unzip) counts as missing too:
            # TotalSegmentator would not download it again, and nnU-Net would fail per series.
            missing.append(folder if not (root / folder).exists()
                           else f"{folder} (incomplete: no {ckpt.relative_to(root)})")
    return missing


@contextlib.contextmanager
def _env(home_dir: str | None):
    """Point TotalSegmentator at ``home_dir`` (``TOTALSEG_HOME_DIR``) for the duration."""
    if home_dir is None:
        yield
        return
    old = os.environ.get("TOTALSEG_HOME_DIR")
    os.environ["TOTALSEG_HOME_DIR"] = str(home_dir)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TOTALSEG_HOME_DIR", None)
        else:
            os.environ["TOTALSEG_HOME_DIR"] = old


def _ts_version() -> str:
    try:
        return importlib.metadata.version("TotalSegmentator")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@dataclasses.dataclass(frozen=True)
class TotalSegOptions:
    """The ``totalsegmentator`` backend's ``segment`` keys (documented at
    :class:`TotalSegmentatorBackend`)."""

    fast: bool = False
    device: str = "auto"
    with_cord: bool = False
    home_dir: str | None = None


def check_weights(options: TotalSegOptions) -> None:
    """The TotalSegmentator package and the weights of every model the configured mode runs
    are on this machine (``segment.home_dir``, else TotalSegmentator's own default), or
    :class:`ConfigError` naming the key and what is missing.  Only the files are looked at."""
    home = options.home_dir
    if home is not None and not Path(str(home)).expanduser().is_dir():
        raise ConfigError(f"segment.home_dir is {home!r}: no such folder (expected "
                          "TotalSegmentator's home folder, holding nnunet/results)",
                          hint="leave it out to use TotalSegmentator's own (~/.totalsegmentator)")
    try:
        with _env(None if home is None else str(Path(str(home)).expanduser())):
            root = weights_dir()
            missing = missing_weights(bool(options.fast), bool(options.with_cord))
    except ImportError as e:
        raise ConfigError(f"segment.backend is totalsegmentator but the TotalSegmentator package "
                          f"is not installed ({e})", hint="pip install '.[totalseg]'") from e
    if missing:
        task = "total_fast" if options.fast else "total"
        where = f"segment.home_dir is {home!r}" if home is not None else "segment.home_dir is unset"
        raise ConfigError(
            f"segment.backend is totalsegmentator ({where}): the weights for task {task!r} are "
            f"missing from {root}: " + "; ".join(missing),
            hint=f"fetch them once with `totalseg_download_weights -t {task}` where there is "
                 "internet access, then set segment.home_dir (or TOTALSEG_HOME_DIR) to a copy "
                 "of that ~/.totalsegmentator folder")


def package_version(options: TotalSegOptions) -> str:
    """The installed TotalSegmentator's version: its models come with it."""
    try:
        return importlib.metadata.version("TotalSegmentator")
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


class TotalSegmentatorBackend:
    """TotalSegmentator's vertebrae (task ``total`` with a spine ``roi_subset``).

    Parameters
    ----------
    fast:
        Use the 3 mm model (Dataset297) instead of the 1.5 mm vertebrae part (Dataset292):
        several times faster, coarser masks (the ``segment.fast`` configuration key).
    device:
        ``"auto"`` (CUDA when torch sees a GPU, otherwise the CPU, said in the log), ``"cpu"``,
        ``"gpu"``/``"cuda"``, ``"gpu:N"``/``"cuda:N"`` or ``"mps"``.
    with_cord:
        Also label the spinal cord (value 60).  In the default mode this runs one more 1.5 mm
        model part (Dataset294, which holds the cord), so it costs time and those weights.
    home_dir:
        TotalSegmentator's home folder (``TOTALSEG_HOME_DIR``: weights under
        ``nnunet/results``, its ``config.json``); ``None`` keeps its own default
        (``$TOTALSEG_HOME_DIR`` or ``~/.totalsegmentator``; ``TOTALSEG_WEIGHTS_PATH`` is obeyed
        too).

    Raises
    ------
    ConfigError
        If TotalSegmentator is not installed, ``device`` is not one of the above, or a model the
        run needs is not in the weights folder.
    """

    name = "totalsegmentator"
    #: 16 GB: TotalSegmentator copies the CT as float64; four threads beside the GPU.
    declaration = Declaration(name, "1", TotalSegOptions, Resources(mem_mb=16000, gpu=True, threads=4),
                              check=check_weights, identity=package_version)

    def __init__(
        self,
        fast: bool = False,
        device: str = "auto",
        with_cord: bool = False,
        home_dir: str | None = None,
    ):
        self.fast = bool(fast)
        self.with_cord = bool(with_cord)
        self.home_dir = None if home_dir is None else str(Path(home_dir).expanduser())
        device = str(device).strip().lower()
        if not _DEVICE.match(device):
            raise ConfigError("segment.device must be auto, cpu, gpu, gpu:N, cuda, cuda:N or mps, "
                              f"got {device!r}")
        try:
            import totalsegmentator.python_api  # noqa: F401  (imports torch and nnU-Net)
        except ImportError as exc:
            raise ConfigError(
                f"the totalsegmentator backend needs the TotalSegmentator package ({exc})",
                hint="pip install TotalSegmentator (it brings nnU-Net v2 and needs torch)",
            ) from exc
        self.version = f"TotalSegmentator {_ts_version()}"
        # Into the SEG's algorithm parameters: the version alone does not say which model ran.
        self.parameters = {"task": "total", "fast": self.fast, "with_cord": self.with_cord}
        self.device = self._resolve_device(device)
        with _env(self.home_dir):
            root = weights_dir()
            missing = missing_weights(self.fast, self.with_cord)
        if missing:
            task = "total_fast" if self.fast else "total"
            raise ConfigError(
                f"TotalSegmentator weights for task {task!r} are missing from {root}: "
                + "; ".join(missing),
                hint=(
                    f"download them once on a machine with internet access with "
                    f"`totalseg_download_weights -t {task}` (or by running TotalSegmentator "
                    f"once), then copy its ~/.totalsegmentator folder here and point "
                    f"TOTALSEG_HOME_DIR (or segment.home_dir) at it, or point "
                    f"TOTALSEG_WEIGHTS_PATH at a copy of its nnunet/results folder"
                ),
            )
        self._lut = _lookup_table(value_map(self.with_cord))
        self._roi = sorted(spine_classes(self.with_cord))
        self._trainers_ready = False

    @staticmethod
    def _resolve_device(device: str) -> str:
        """Our device option -> TotalSegmentator's (``gpu``, ``gpu:N``, ``cpu``, ``mps``)."""
        import torch

        device = device.replace("cuda", "gpu")
        if device == "auto":
            if torch.cuda.is_available():
                log.info("TotalSegmentator runs on the GPU (%s)", torch.cuda.get_device_name(0))
                return "gpu"
            log.warning("TotalSegmentator runs on the CPU: torch sees no CUDA GPU "
                        "(expect minutes per series; segment.fast shortens it)")
            return "cpu"
        if device.startswith("gpu") and not torch.cuda.is_available():
            log.warning("segment.device is %s but torch sees no CUDA GPU: TotalSegmentator "
                        "will fall back to the CPU", device)
        return device

    def _predict(self, ct: Volume) -> np.ndarray:
        """Run TotalSegmentator on ``ct``; its label map (its values) on ``ct``'s grid."""
        import nibabel as nib
        from totalsegmentator import python_api

        if not self._trainers_ready:
            models = required_models(self.fast, self.with_cord)
            _register_trainers({trainer for _tid, _folder, trainer in models})
            self._trainers_ready = True

        img = nib.Nifti1Image(np.asarray(ct.array), ct.affine)
        img.set_qform(ct.affine, code=1)
        img.set_sform(ct.affine, code=1)
        stdout = io.StringIO()
        send_stats = python_api.send_usage_stats
        # No usage statistics (the only network call left once the weights are there), and its
        # prints go to our debug log.  With an in-memory input and output it writes only to
        # temporary folders (``tempfile``, so ``TMPDIR``) and its home's ``config.json``.
        python_api.send_usage_stats = lambda *args, **kwargs: None
        try:
            with _env(self.home_dir), contextlib.redirect_stdout(stdout):
                out = python_api.totalsegmentator(
                    img, None, ml=True, task=TASK, roi_subset=list(self._roi), fast=self.fast,
                    device=self.device, quiet=True, nr_thr_resamp=1, nr_thr_saving=1,
                )
        finally:
            python_api.send_usage_stats = send_stats
            if stdout.getvalue().strip():
                log.debug("TotalSegmentator said:\n%s", stdout.getvalue().rstrip())
        seg = np.asanyarray(out.dataobj)
        if seg.shape != ct.array.shape:
            raise RuntimeError(
                f"TotalSegmentator returned shape {seg.shape} for a CT of {ct.array.shape}")
        return seg

    def segment(self, ct: Volume, *, series_key: str) -> SegmentationResult:
        """Segment and name the vertebrae of ``ct`` (HU) with TotalSegmentator.

        Raises
        ------
        SegmentationError
            With reason ``"no-spine"`` when TotalSegmentator labels no vertebra.
        """
        t0 = time.perf_counter()
        seg = self._predict(ct)
        t1 = time.perf_counter()
        if seg.size and (int(seg.max()) > 255 or int(seg.min()) < 0):
            raise RuntimeError(
                f"TotalSegmentator label values out of range: {seg.min()}..{seg.max()}")
        labels = self._lut[seg.astype(np.uint8, copy=False)]  # anything not spine -> 0
        if not np.isin(labels, list(_VERTEBRA_VALUES)).any():  # the cord alone is no spine
            mode = "3 mm" if self.fast else "1.5 mm"
            raise SegmentationError(series_key, "no-spine",
                                    f"TotalSegmentator ({mode}) labelled no vertebra")
        timing = {"totalsegmentator": round(t1 - t0, 3), "map": round(time.perf_counter() - t1, 3)}
        return finish_labels(ct, labels, series_key=series_key, backend=self.name,
                             version=self.version, timing=timing)



def _register_trainers(names: set[str]) -> None:
    """Hand TotalSegmentator the nnU-Net trainer classes its models name, found robustly.

    nnU-Net finds a trainer class by importing every module under
    ``nnunetv2/training/nnUNetTrainer`` until one defines it, and the first module that fails
    to import ends the search with that error.  Some of them import optional architectures
    (Primus -> timm -> torchvision), and torchvision is easily broken: with a CPU-only torch
    build and PyPI's (CUDA) torchvision wheel, ``import torchvision`` raises "operator
    torchvision::nms does not exist", and every prediction would fail on it although no model
    of ours uses them.  So we look the classes up ourselves, skipping modules that do not
    import, and put them in TotalSegmentator's table of custom trainers, which its lookup
    consults first.  Without that table (another TotalSegmentator version) nothing is done.
    """
    import importlib
    import pkgutil

    try:
        import nnunetv2.training.nnUNetTrainer as package
        from totalsegmentator import nnunet as ts_nnunet
    except ImportError:
        return
    table = getattr(ts_nnunet, "custom_trainers", None)
    todo = {n for n in names if n not in (table or {})}
    if table is None or not todo:
        return
    modules = pkgutil.walk_packages(package.__path__, package.__name__ + ".",
                                    onerror=lambda _name: None)
    for info in modules:
        if info.ispkg:
            continue
        try:
            module = importlib.import_module(info.name)
        except Exception as exc:  # noqa: BLE001 -- an optional trainer we do not need
            log.debug("skipped nnU-Net trainer module %s: %s", info.name, exc)
            continue
        for name in list(todo):
            cls = getattr(module, name, None)
            if isinstance(cls, type):
                table[name] = cls
                todo.discard(name)
        if not todo:
            return
    if todo:  # leave it to nnU-Net's own search, which will say what is wrong
        log.warning("nnU-Net trainer class(es) %s not found", ", ".join(sorted(todo)))
