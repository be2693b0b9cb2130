"""A trained network's description, and the grid work around it (torch, on the inference device).

A model is a folder, in one of two forms:

* a **MONAI bundle** (``configs/metadata.json``, ``configs/inference.json`` or ``.yaml``,
  ``models/model.pt``): the network is the bundle's own ``network_def``, built by
  :class:`monai.bundle.ConfigParser`; the target spacing, intensity window, orientation and
  sliding-window size are read from the bundle's ``Spacingd``, ``ScaleIntensityRanged`` (or
  ``NormalizeIntensityd``), ``Orientationd`` and inferer; the label names from
  ``network_data_format.outputs.pred.channel_def`` in the metadata.  A ``"spine_idc"`` object
  in the metadata overrides any of these (keys as in the plain form below).  This reads
  MONAI's own bundles, e.g. the whole-body CT bundle, whose channels ``vertebrae_L1`` and so on
  map to our levels, as well as the bundles :mod:`spine_idc.train` writes;
* a **checkpoint plus a small description**, ``model.json``::

      {"architecture": "SegResNet", "network": {"init_filters": 16, "out_channels": 7},
       "checkpoint": "model.pt", "spacing_mm": [1.5, 1.5, 1.5], "orientation": "RAS",
       "intensity": {"kind": "range", "a_min": -1000, "a_max": 1500, "b_min": 0, "b_max": 1},
       "roi_size": [96, 96, 96], "labels": {"1": "L1", "2": "L2", "6": "sacrum"}}

  where ``architecture`` is a class of :mod:`monai.networks.nets` (SegResNet, DynUNet, UNet,
  BasicUNet ...) and ``network`` its keyword arguments.

Channel names become our label values through :func:`.labelmap.level_value`; channels that are
not spine (organs of a whole-body model) are background to us.

The grid work keeps the network's grid and the CT's grid exactly related: the CT is first put
in the model's orientation by axis permutation and flips only (no interpolation), then
resampled to the model's spacing with trilinear interpolation whose corner voxels coincide
(``align_corners``), and the labels come back by nearest-index lookup along each axis on the
same correspondence.

Over 400 lines: reading a MONAI bundle or a checkpoint with its description, and the grid work
they imply (orientation, spacing, window, sliding window, back to the CT's grid), must agree
with each other line for line; the backends that use them are separate.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import ConfigError
from .labelmap import level_value

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

_BUNDLE_CONFIGS = ("inference.json", "inference.yaml", "inference.yml")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What inference needs to know about a model, whatever form it came in."""

    folder: Path
    checkpoint: Path
    sha256: str
    spacing_mm: tuple[float, float, float]
    roi_size: tuple[int, int, int]
    orientation: str = "RAS"
    #: normalisation steps applied in order (see :func:`intensity_steps`)
    intensity: list = dataclasses.field(default_factory=list)
    #: channel index -> our label value (spine channels only)
    channels: dict[int, int] = dataclasses.field(default_factory=dict)
    n_channels: int = 0
    name: str = ""
    architecture: str = ""
    network: dict = dataclasses.field(default_factory=dict)
    bundle_config: Path | None = None

    def identity(self) -> str:
        """A hash of everything that decides the output: weights, grid, intensity, labels, network.

        The segment stage's stamps use it, so a changed bundle config redoes the segmentation
        as new weights do.
        """
        parts = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("folder", "checkpoint", "bundle_config")}
        text = json.dumps(parts, sort_keys=True, default=str)
        for path in (self.bundle_config, self.folder / "configs" / "metadata.json", self.folder / "model.json"):
            if path is not None and Path(path).is_file():
                text += Path(path).read_text()
        return hashlib.sha256(text.encode()).hexdigest()

    def build_network(self):
        """The untrained network (weights are loaded by the caller)."""
        if self.bundle_config is not None:
            from monai.bundle import ConfigParser

            parser = ConfigParser()
            parser.read_config(str(self.bundle_config))
            meta = self.folder / "configs" / "metadata.json"
            if meta.exists():
                parser.read_meta(str(meta))
            return parser.get_parsed_content("network_def")
        import monai.networks.nets as nets

        cls = getattr(nets, self.architecture, None)
        if cls is None:
            raise ConfigError(f"model {self.folder}: unknown architecture {self.architecture!r}",
                              hint="a class of monai.networks.nets, e.g. SegResNet, DynUNet, UNet")
        kwargs = {"spatial_dims": 3, "in_channels": 1, **self.network}
        return cls(**kwargs)


def sha256_of(path: Path) -> str:
    """SHA-256 of a file, computed once per file version (a shard job asks twice: for its
    stamps, then when it loads the model)."""
    st = Path(path).stat()
    return _sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _channels(names: dict) -> tuple[dict[int, int], int]:
    out = {}
    for key, name in names.items():
        value = level_value(str(name))
        if value is not None and int(key) != 0:
            out[int(key)] = value
    n = max((int(k) for k in names), default=0) + 1
    return out, n


def _walk(node: Any, path: str = ""):
    """Every dict inside a bundle config, with its config id (``a::b::0``)."""
    if isinstance(node, dict):
        yield path, node
        for k, v in node.items():
            yield from _walk(v, f"{path}::{k}" if path else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}::{i}" if path else str(i))


def _target(d: dict) -> str:
    return str(d.get("_target_", "")).rsplit(".", 1)[-1]


_KNOWN_INTENSITY = {"ScaleIntensityRange", "NormalizeIntensity", "ScaleIntensity"}


def _bundle_settings(parser, raw: dict, folder: Path) -> dict:
    """Spacing, intensity, orientation and ROI as a bundle's own transforms state them.

    Values may be references or expressions (``"@pixdim"``, ``"$[1.5]*3"``): they are resolved by
    MONAI's own :class:`~monai.bundle.ConfigParser`, as the bundle would resolve them.  Intensity
    transforms are kept as a chain, in the order of the bundle's preprocessing.
    """
    def value(path: str, d: dict, key: str, default=None):
        v = d.get(key, default)
        if isinstance(v, str) and v[:1] in "@$%":
            v = parser.get_parsed_content(f"{path}::{key}")
        return v

    found: dict = {}
    steps: list[dict] = []
    scope = raw.get("preprocessing", raw)
    prefix = "preprocessing" if "preprocessing" in raw else ""
    for path, d in _walk(scope, prefix):
        kind = _target(d).removesuffix("d")
        if kind == "Spacing" and "pixdim" in d:
            found.setdefault("spacing_mm", value(path, d, "pixdim"))
        elif kind == "Orientation" and "axcodes" in d:
            found.setdefault("orientation", value(path, d, "axcodes"))
        elif kind == "ScaleIntensityRange":
            # MONAI's defaults: b_min, b_max None (no rescale: not used by real bundles), clip False
            steps.append({"kind": "range", **{k: value(path, d, k) for k in ("a_min", "a_max", "b_min", "b_max")},
                          "clip": bool(value(path, d, "clip", False))})
        elif kind == "NormalizeIntensity":
            steps.append({"kind": "zscore", "nonzero": bool(value(path, d, "nonzero", False))})
        elif kind == "ScaleIntensity":
            steps.append({"kind": "minmax", "minv": value(path, d, "minv", 0.0), "maxv": value(path, d, "maxv", 1.0)})
        elif "Intensity" in kind and kind not in _KNOWN_INTENSITY:
            raise ConfigError(f"model {folder}: intensity transform {_target(d)} is not supported",
                              hint='state the intensity steps in the metadata\'s "spine_idc" object')
    if steps:
        found["intensity"] = steps
    for path, d in _walk(raw):
        if _target(d) == "SlidingWindowInferer" and "roi_size" in d:
            found.setdefault("roi_size", value(path, d, "roi_size"))
    return found


def intensity_steps(intensity) -> list[dict]:
    """The intensity normalisation as a list of steps (a single dict is one step), checked."""
    steps = [intensity] if isinstance(intensity, dict) else list(intensity or [])
    out = []
    for step in steps:
        step = dict(step)
        kind = step.setdefault("kind", "range")
        if kind == "range":
            for key in ("a_min", "a_max"):
                if not isinstance(step.get(key), (int, float)):
                    raise ConfigError(f"intensity step {step}: {key} must be a number")
            step = {"b_min": 0.0, "b_max": 1.0, "clip": False, **step}
            if not all(isinstance(step[k], (int, float)) for k in ("b_min", "b_max")):
                raise ConfigError(f"intensity step {step}: b_min and b_max must be numbers")
        elif kind == "minmax":
            step = {"minv": 0.0, "maxv": 1.0, **step}
        elif kind != "zscore":
            raise ConfigError(f"intensity step {step}: kind must be range, zscore or minmax")
        out.append(step)
    return out


def _need_numbers(settings: dict, folder: Path) -> None:
    for key in ("spacing_mm", "roi_size"):
        value = settings.get(key)
        if not (isinstance(value, (list, tuple)) and len(value) == 3
                and all(isinstance(x, (int, float)) for x in value)):
            raise ConfigError(
                f"model {folder}: {key} must be three numbers, got {value!r}",
                hint=f'state it in the bundle metadata\'s "spine_idc" object, e.g. "{key}": [1.5, 1.5, 1.5]')


def load_model(folder: str | Path) -> ModelSpec:
    """Read a model folder (bundle or ``model.json``); raises :class:`ConfigError` if unusable."""
    folder = Path(folder).expanduser()
    hint = ("point segment.model at a MONAI bundle folder (configs/metadata.json, "
            "configs/inference.json, models/model.pt) or a folder with model.json and its checkpoint")
    if not str(folder) or not folder.is_dir():
        raise ConfigError(f"segment.model: model folder {str(folder)!r} does not exist", hint=hint)
    meta_path = folder / "configs" / "metadata.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        config_path = next((folder / "configs" / n for n in _BUNDLE_CONFIGS
                            if (folder / "configs" / n).exists()), None)
        if config_path is None:
            raise ConfigError(f"model {folder}: bundle has no configs/inference.json", hint=hint)
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config(str(config_path))
        parser.read_meta(str(meta_path))
        try:
            settings = _bundle_settings(parser, parser.get(), folder)
        except ConfigError:
            raise
        except Exception as err:  # noqa: BLE001 - a reference MONAI cannot resolve
            raise ConfigError(f"model {folder}: could not read the bundle's preprocessing: {err}") from err
        names = (meta.get("network_data_format", {}).get("outputs", {}).get("pred", {})
                 .get("channel_def", {}))
        settings.update(meta.get("spine_idc", {}))
        names = settings.pop("labels", names)
        checkpoint = folder / settings.pop("checkpoint", "models/model.pt")
        name = meta.get("name") or folder.name
        arch, network = "", {}
    else:
        desc_path = folder / "model.json"
        if not desc_path.exists():
            raise ConfigError(f"model {folder}: neither configs/metadata.json nor model.json found", hint=hint)
        settings = json.loads(desc_path.read_text())
        names = settings.pop("labels", {})
        checkpoint = folder / settings.pop("checkpoint", "model.pt")
        arch, network = settings.pop("architecture", ""), settings.pop("network", {})
        name, config_path = settings.pop("name", folder.name), None
    _need_numbers(settings, folder)
    if not checkpoint.is_file():
        raise ConfigError(f"model {folder}: weights {checkpoint} are missing", hint=hint)
    channels, n = _channels(names)
    if not channels:
        raise ConfigError(f"model {folder}: no output channel is a vertebra level (labels: {names})",
                          hint='name channels like "L1", "vertebrae_L1" or "sacrum"')
    if "intensity" not in settings:
        raise ConfigError(f"model {folder}: no intensity normalisation found",
                          hint='a ScaleIntensityRanged in the bundle, or "intensity" in the description')
    intensity = intensity_steps(settings["intensity"])
    if "orientation" not in settings:
        raise ConfigError(f"model {folder}: no orientation found (Orientationd)",
                          hint='state it, e.g. "orientation": "RAS"')
    orient = settings["orientation"]
    return ModelSpec(
        folder=folder, checkpoint=checkpoint, sha256=sha256_of(checkpoint),
        spacing_mm=tuple(float(x) for x in settings["spacing_mm"]),
        roi_size=tuple(int(x) for x in settings["roi_size"]),
        orientation="".join(orient) if isinstance(orient, (list, tuple)) else str(orient),
        intensity=intensity, channels=channels, n_channels=n, name=str(name),
        architecture=arch, network=network, bundle_config=config_path)


# --- grids -------------------------------------------------------------------------------

@dataclasses.dataclass
class NetworkGrid:
    """How the CT's array maps onto the network's: a reorientation, then a resize."""

    native_shape: tuple[int, int, int]
    transform: np.ndarray  # nibabel orientation transform native -> model orientation
    oriented_shape: tuple[int, int, int]
    oriented_affine: np.ndarray  # voxel -> RAS of the oriented array
    shape: tuple[int, int, int]  # the network grid

    @property
    def affine(self) -> np.ndarray:
        """Voxel -> RAS of the network grid (corners coincide with the oriented array's)."""
        scale = np.array([(o - 1) / (n - 1) if n > 1 else 1.0
                          for o, n in zip(self.oriented_shape, self.shape)])
        a = self.oriented_affine.copy()
        a[:3, :3] = a[:3, :3] * scale
        return a


def network_grid(shape, affine: np.ndarray, spacing_mm, orientation: str = "RAS") -> NetworkGrid:
    """The network grid for a CT of ``shape``/``affine`` (voxel -> RAS)."""
    import nibabel.orientations as nio

    transform = nio.ornt_transform(nio.io_orientation(affine), nio.axcodes2ornt(tuple(orientation)))
    inv = nio.inv_ornt_aff(transform, shape)
    oriented_affine = affine @ inv
    order = transform[:, 0].astype(int)
    oriented_shape = tuple(int(shape[i]) for i in np.argsort(order))
    spacing = np.linalg.norm(oriented_affine[:3, :3], axis=0)
    size = tuple(max(1, int(round((n - 1) * s / t)) + 1)
                 for n, s, t in zip(oriented_shape, spacing, spacing_mm))
    return NetworkGrid(tuple(int(x) for x in shape), transform, oriented_shape, oriented_affine, size)


def to_network(array: np.ndarray, g: NetworkGrid, intensity, device) -> "torch.Tensor":
    """CT array (HU) -> ``[1, 1, *g.shape]`` float tensor on ``device``, normalised."""
    import nibabel.orientations as nio
    import torch
    import torch.nn.functional as F

    oriented = np.ascontiguousarray(nio.apply_orientation(array, g.transform))
    x = torch.from_numpy(oriented.astype(np.float32, copy=False)).to(device, non_blocking=True)
    for step in intensity_steps(intensity):
        if step["kind"] == "zscore":
            sel = x[x != 0] if step.get("nonzero") else x
            mean, std = sel.mean(), sel.std().clamp_min(1e-6)
            x = torch.where(x != 0, (x - mean) / std, x) if step.get("nonzero") else (x - mean) / std
        elif step["kind"] == "minmax":
            lo, hi = x.min(), x.max()
            x = (x - lo) / (hi - lo).clamp_min(1e-6) * (step["maxv"] - step["minv"]) + step["minv"]
        else:
            a0, a1 = float(step["a_min"]), float(step["a_max"])
            b0, b1 = float(step["b_min"]), float(step["b_max"])
            x = (x - a0) / (a1 - a0) * (b1 - b0) + b0
            if step["clip"]:
                x = x.clamp(min(b0, b1), max(b0, b1))
    x = x[None, None]
    if tuple(x.shape[2:]) != g.shape:
        x = F.interpolate(x, size=g.shape, mode="trilinear", align_corners=True)
    return x


def _nearest_index(n_from: int, n_to: int, device) -> "torch.Tensor":
    """For each of ``n_to`` voxels, the nearest of ``n_from`` on the corner-aligned correspondence."""
    import torch

    if n_to == 1 or n_from == 1:
        return torch.zeros(n_to, dtype=torch.long, device=device)
    pos = torch.arange(n_to, device=device, dtype=torch.float64) * (n_from - 1) / (n_to - 1)
    return torch.round(pos).long().clamp_(0, n_from - 1)


def labels_to_network(labels: np.ndarray, g: NetworkGrid) -> np.ndarray:
    """A label array on the CT grid -> the network grid: the inverse lookup of :func:`to_native`
    (nearest index on the same corner-aligned correspondence), for training targets."""
    import nibabel.orientations as nio
    import torch

    out = torch.from_numpy(np.ascontiguousarray(nio.apply_orientation(labels, g.transform)))
    for axis, n in enumerate(g.shape):
        out = out.index_select(axis, _nearest_index(out.shape[axis], n, "cpu"))
    return out.numpy()


def to_native(labels: "torch.Tensor", g: NetworkGrid) -> np.ndarray:
    """Network-grid labels ``[X, Y, Z]`` -> numpy labels on the CT's own array grid."""
    import nibabel.orientations as nio

    out = labels
    for axis, n in enumerate(g.oriented_shape):
        out = out.index_select(axis, _nearest_index(out.shape[axis], n, out.device))
    oriented = out.cpu().numpy()
    return np.ascontiguousarray(nio.apply_orientation(oriented, _invert(g.transform)))


def _invert(transform: np.ndarray) -> np.ndarray:
    """The orientation transform that undoes ``transform`` (nibabel's ornt arrays)."""
    inv = np.zeros_like(transform)
    for src, (dst, flip) in enumerate(transform):
        inv[int(dst)] = (src, flip)
    return inv


# --- post-processing on the device ---------------------------------------------------------

#: Propagation steps before a level is handed to the CPU: a vertebra at 1.5 mm converges in well
#: under this; a long thin or fragmented region (a poor or untrained network's) may need
#: hundreds of full-box steps, where one CPU labelling pass is cheaper.
MAX_PROPAGATION_STEPS = 128


def keep_largest_components(labels: "torch.Tensor", values, max_steps: int = MAX_PROPAGATION_STEPS,
                            method: str = "auto") -> "torch.Tensor":
    """Keep only the largest 26-connected component of each value in ``labels`` ``[X, Y, Z]``.

    Runs where ``labels`` is (the GPU in production): each value's bounding box is cut out and
    its voxels take the largest voxel id among their neighbours until nothing changes (label
    propagation by 3x3x3 max-pooling), which gives every component one id.  A level that has
    not settled after ``max_steps`` steps is labelled on the CPU (scipy) instead, so that the
    time stays bounded whatever the network produced.  ``method``: ``auto`` propagates on a GPU
    and labels with scipy on the CPU (far faster there); ``propagate`` or ``cpu`` force one.
    """
    import torch
    import torch.nn.functional as F

    out = labels.clone()
    on_cpu = method == "cpu" or (method == "auto" and labels.device.type == "cpu")
    for v in values:
        mask = labels == v
        if not bool(mask.any()):
            continue
        lo, hi = [], []
        for axis in range(3):
            a, b = (d for d in range(3) if d != axis)
            hit = torch.nonzero(mask.any(dim=b).any(dim=a)).flatten()
            lo.append(int(hit[0]))
            hi.append(int(hit[-1]) + 1)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        m = mask[box]
        if on_cpu:
            _largest_on_cpu(out, box, m)
            continue
        # float ids are exact up to 2**24 (float32) voxels per box
        dtype = torch.float32 if m.numel() < 2**24 else torch.float64
        ids = torch.arange(1, m.numel() + 1, device=m.device, dtype=dtype).reshape(m.shape)
        ids = torch.where(m, ids, torch.zeros_like(ids))
        mf = m.to(dtype)
        step, settled = 0, False
        while step < max_steps:
            grown = F.max_pool3d(ids[None, None], 3, stride=1, padding=1)[0, 0] * mf
            step += 1
            if step % 4 == 0 and torch.equal(grown, ids):
                settled = True
                break
            ids = grown
        if not settled:
            _largest_on_cpu(out, box, m)
            continue
        found, counts = torch.unique(ids[m], return_counts=True)
        if len(found) > 1:
            keep = found[torch.argmax(counts)]
            region = out[box]
            region[m & (ids != keep)] = 0
    return out


def _largest_on_cpu(out: "torch.Tensor", box, m: "torch.Tensor") -> None:
    """The CPU fallback of :func:`keep_largest_components` for one level's box."""
    import torch

    from .labelmap import largest_piece

    mask = m.cpu().numpy()
    drop = mask & ~largest_piece(mask)
    if drop.any():
        region = out[box]
        region[torch.from_numpy(drop).to(out.device)] = 0
