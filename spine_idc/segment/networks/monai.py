"""The ``monai`` backend: a trained MONAI network, sliding-window inference on the GPU.

For each series: the CT is put on the model's grid (:mod:`.model`: reorientation, trilinear
resampling and intensity normalisation, done on the inference device), a sliding-window
inference runs with automatic mixed precision on CUDA, the class map is taken by argmax, one
connected component is kept per level (on the device), and the labels come back to the CT's
own grid.  :mod:`.labelmap` then checks the anatomical order, derives the bodies and writes the
QC record on the CPU.

The work is split for the shard pipeline (:func:`spine_idc.pipeline.shards.segment`):
:meth:`MonaiBackend.preprocess` (read side: orientation, resampling) runs in a loader thread
for the next series while :meth:`MonaiBackend.infer` runs the network on the current one, and
:meth:`MonaiBackend.finish` (CPU: bodies, QC) runs in a writer thread.

Without CUDA the backend runs on the CPU and says so once in the log; ``device: cuda`` makes a
missing GPU an error instead.  The model's weights are checksummed (SHA-256); the checksum,
MONAI's and torch's versions go into the SEG's algorithm identification.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from pathlib import Path

import numpy as np

from ...errors import ConfigError, SegmentationError
from ...volume import Volume
from ..base import Declaration, Resources, SegmentationResult
from .labelmap import finish_labels

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Prepared:
    """A series on the network grid, ready for inference."""

    ct: Volume
    grid: object
    image: object  # torch tensor [1, 1, X, Y, Z] on the inference device
    seconds: float


@dataclasses.dataclass(frozen=True)
class MonaiOptions:
    """The ``monai`` backend's ``segment`` keys (documented at :class:`MonaiBackend`)."""

    model: str = ""
    device: str = "auto"
    amp: bool = True
    sw_batch_size: int = 4
    overlap: float = 0.25


_MODEL_HINT = ("point segment.model at a MONAI bundle folder (configs/metadata.json, "
               "configs/inference.json, models/model.pt), a folder with model.json and its "
               "checkpoint, or a bucket address (gs://..., s3://...)")
_BUNDLE_CONFIGS = ("inference.json", "inference.yaml", "inference.yml")


def check_model(options: MonaiOptions) -> None:
    """The model folder and its weights are on this machine, or :class:`ConfigError` (one line
    naming ``segment.model``, its value and what is expected).

    ``segment.model`` must be a model folder in one of the two forms
    :func:`spine_idc.segment.networks.model.load_model` reads, with its weights file.  A bucket
    address (``gs://``, ``s3://``, any ``scheme://``) cannot be checked offline: the job fetches
    it and says what is wrong.  Only the files are looked at: whether the weights fit the
    network is the job's to find.
    """
    model = str(options.model or "")
    if not model.strip():
        raise ConfigError("segment.model is empty: segment.backend monai needs a model folder",
                          hint=_MODEL_HINT)
    if "://" in model:
        return  # in a bucket: fetched into the job (common.smk), checked there
    folder = Path(model).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"segment.model is {model!r}: no such folder (expected a model folder "
                          "for segment.backend monai)", hint=_MODEL_HINT)
    meta_path = folder / "configs" / "metadata.json"
    if meta_path.is_file():  # a MONAI bundle
        if not any((folder / "configs" / name).is_file() for name in _BUNDLE_CONFIGS):
            raise ConfigError(f"segment.model is {model!r}: a MONAI bundle without "
                              "configs/inference.json (or .yaml)", hint=_MODEL_HINT)
        description, default = meta_path, "models/model.pt"
        own = _read_json_object(meta_path, model).get("spine_idc", {})
    elif (folder / "model.json").is_file():
        description, default = folder / "model.json", "model.pt"
        own = _read_json_object(description, model)
    else:
        raise ConfigError(f"segment.model is {model!r}: neither configs/metadata.json nor "
                          "model.json in that folder", hint=_MODEL_HINT)
    checkpoint = own.get("checkpoint", default) if isinstance(own, dict) else default
    if not (folder / str(checkpoint)).is_file():
        raise ConfigError(f"segment.model is {model!r}: its weights {checkpoint} are missing "
                          f"(as {description.relative_to(folder)} says)", hint=_MODEL_HINT)


def _read_json_object(path: Path, model: str) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"segment.model is {model!r}: {path.name} is not readable JSON: "
                          f"{' '.join(str(e).split())}") from e
    if not isinstance(value, dict):
        raise ConfigError(f"segment.model is {model!r}: {path.name} does not hold a JSON object")
    return value


def model_identity(options: MonaiOptions) -> str:
    """A hash of the model folder's weights and configuration (see ``ModelSpec.identity``)."""
    from .model import load_model

    return load_model(options.model).identity()


class MonaiBackend:
    """Segment with a MONAI network described by ``model`` (a bundle or model.json folder).

    Parameters
    ----------
    model:
        The model folder (see :mod:`.model`).
    device:
        ``auto`` (CUDA if there is one, else CPU with a log line), ``cuda``, ``cuda:1`` or ``cpu``.
    amp:
        Automatic mixed precision (float16) on CUDA.
    sw_batch_size, overlap:
        Windows per forward pass and their overlap, for MONAI's sliding-window inferer.
    """

    name = "monai"
    #: 12 GB: the CT, its copy on the network grid and the class map; four threads load and
    #: write beside the GPU.
    declaration = Declaration(name, "1", MonaiOptions, Resources(mem_mb=12000, gpu=True, threads=4),
                              check=check_model, identity=model_identity)

    def __init__(self, model: str = "", device: str = "auto", amp: bool = True,
                 sw_batch_size: int = 4, overlap: float = 0.25):
        import monai
        import torch

        from .model import load_model

        if not model:
            raise ConfigError("segment.backend is monai but segment.model is empty",
                              hint="--config segment={'backend': 'monai', 'model': 'path/to/bundle'}")
        self.spec = load_model(model)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
            if device == "cpu":
                log.warning("monai backend: no CUDA device, running on the CPU (much slower)")
        elif device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"segment.device is {device} but torch sees no CUDA device",
                              hint="use device: auto to fall back to the CPU")
        self.device = torch.device(device)
        self._streams = threading.local()  # one CUDA stream per loader thread
        self.amp = bool(amp) and self.device.type == "cuda"
        self.sw_batch_size, self.overlap = int(sw_batch_size), float(overlap)
        net = self.spec.build_network()
        try:
            state = torch.load(self.spec.checkpoint, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - not a plain tensor checkpoint
            raise ConfigError(f"model {self.spec.folder}: cannot read {self.spec.checkpoint.name}: "
                              f"{str(err).splitlines()[0]}") from err
        state = _state_dict(state)
        try:
            net.load_state_dict(state)
        except RuntimeError as err:
            raise ConfigError(f"model {self.spec.folder}: weights do not fit the network: "
                              f"{str(err).splitlines()[0]}") from err
        self.net = net.to(self.device).eval()
        self.version = f"monai {monai.__version__} torch {torch.__version__} sha256:{self.spec.sha256[:12]}"
        self.parameters = {
            "model": self.spec.name, "weights_sha256": self.spec.sha256,
            "spacing_mm": list(self.spec.spacing_mm), "roi_size": list(self.spec.roi_size),
            "device": self.device.type, "amp": self.amp, "overlap": self.overlap,
        }
        log.info("monai backend: model %s (sha256 %s) on %s%s", self.spec.name,
                 self.spec.sha256[:12], self.device, ", mixed precision" if self.amp else "")

    def _sync(self) -> None:
        """Wait for this backend's device (timings; a no-op on the CPU)."""
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)

    # -- the three steps of the shard pipeline --------------------------------------------
    def preprocess(self, ct: Volume, series_key: str) -> Prepared:
        from .model import network_grid, to_network

        t = time.perf_counter()
        g = network_grid(ct.array.shape, ct.affine, self.spec.spacing_mm, self.spec.orientation)
        if self.device.type != "cuda":
            image = to_network(ct.array, g, self.spec.intensity, self.device)
        else:
            # On a side stream of this loader thread, so that the copy to the GPU and the
            # resampling run beside the inference on the default stream, not queued behind it.
            import torch

            stream = getattr(self._streams, "stream", None)
            if stream is None:
                stream = self._streams.stream = torch.cuda.Stream(self.device)
            with torch.cuda.stream(stream):
                image = to_network(ct.array, g, self.spec.intensity, self.device)
            stream.synchronize()  # this series' work only
            # the inference (default stream) will read it: the allocator must not reuse its
            # memory for this stream before that work is done
            image.record_stream(torch.cuda.default_stream(self.device))
        return Prepared(ct=ct, grid=g, image=image, seconds=time.perf_counter() - t)

    def infer(self, item: Prepared, series_key: str) -> tuple[np.ndarray, dict]:
        """The network's level map on the CT grid (our values) and step timings."""
        import torch
        from monai.inferers import sliding_window_inference

        from .model import keep_largest_components, to_native

        sync = self._sync
        sync()  # the loaders' work queued on the device is not this series' inference
        t0 = time.perf_counter()
        try:
            with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.float16,
                                                        enabled=self.amp):
                logits = sliding_window_inference(
                    item.image, self.spec.roi_size, self.sw_batch_size, self.net,
                    overlap=self.overlap, mode="gaussian")
            item.image = None  # the input is not needed any more: free it now
            if logits.shape[1] <= max(self.spec.channels):
                raise ConfigError(f"model {self.spec.folder}: the network gives {logits.shape[1]} "
                                  f"channels, its label table names channel {max(self.spec.channels)}")
            n = logits.shape[1]
            classes = torch.argmax(logits[0], dim=0)
            del logits
            sync()
            t1 = time.perf_counter()
            # Our values; every channel that is not spine becomes background.
            lut = torch.zeros(n, dtype=torch.int16, device=classes.device)
            for channel, value in self.spec.channels.items():
                lut[channel] = value
            levels = lut[classes]
            del classes
            levels = keep_largest_components(levels, sorted(set(self.spec.channels.values())))
            native = to_native(levels, item.grid)
            sync()
        except torch.OutOfMemoryError:  # this series only: the shard goes on
            item.image = None
            oom = True
        else:
            oom = False
        if oom:  # outside the handler, so that the traceback's tensors are freed first
            torch.cuda.empty_cache()
            raise SegmentationError(series_key, "out-of-memory",
                                    f"the GPU ran out of memory on a {item.grid.shape} grid")
        t2 = time.perf_counter()
        timing = {"preprocess": round(item.seconds, 3), "infer": round(t1 - t0, 3),
                  "postprocess_device": round(t2 - t1, 3)}
        return native, timing

    def finish(self, item: Prepared, native: np.ndarray, timing: dict, series_key: str) -> SegmentationResult:
        # Components kept on the network grid stay whole on the CT's grid unless the CT is
        # coarser along some axis (thick slices), where nearest sampling can split one.
        finer = bool(np.all(item.ct.spacing <= np.asarray(self.spec.spacing_mm) + 1e-6))
        return finish_labels(item.ct, native, series_key=series_key, backend=self.name,
                             version=self.version, timing=timing, components_done=finer)

    def segment(self, ct: Volume, *, series_key: str) -> SegmentationResult:
        item = self.preprocess(ct, series_key)
        native, timing = self.infer(item, series_key)
        return self.finish(item, native, timing, series_key)


def _state_dict(state):
    """The weights in a checkpoint: a bare state dict, or one wrapped as MONAI and Lightning
    save them (``state_dict``, ``model``, ``network``), with DataParallel's ``module.`` prefix
    removed."""
    if isinstance(state, dict):
        for key in ("state_dict", "model", "network", "net"):
            inner = state.get(key)
            if isinstance(inner, dict) and not any(str(k).endswith((".weight", ".bias")) for k in state):
                state = inner
                break
        if state and all(str(k).startswith("module.") for k in state):
            state = {str(k)[len("module."):]: v for k, v in state.items()}
    return state
