"""Train a MONAI vertebra network from labelled CTs and save it as a MONAI bundle.

Training pairs are CT volumes (HU) with label maps in our coding values (phantoms, IDC's
existing vertebra SEGs, our own QC-passed results).  Both go onto the model's grid with the
same code inference uses (:mod:`spine_idc.segment.networks.model`), so what the network learns is
what the ``monai`` backend feeds it.  The output is a MONAI bundle folder
(``configs/metadata.json``, ``configs/inference.json``, ``models/model.pt``) that
:func:`spine_idc.segment.networks.model.load_model` reads back, as it reads MONAI's own bundles.

This is deliberately plain: random crops of the model's window size, Dice + cross-entropy,
AdamW, a fixed number of steps or a time budget.  It is what the tests use to show that the
backend learns and labels; training a production model is the same call with real data, a
bigger network and hours rather than seconds.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np

from . import coding
from .atomic import atomic_dir
from .volume import Volume

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainOptions:
    """How to train; the defaults suit a CPU smoke run on phantoms, not a production model."""

    spacing_mm: float = 4.0
    roi_size: tuple[int, int, int] = (64, 64, 64)
    #: a class of monai.networks.nets and its keyword arguments (out_channels is added). The
    #: default, a plain 5-level UNet, trains about ten times faster on a CPU than SegResNet.
    architecture: str = "UNet"
    network: dict = dataclasses.field(default_factory=lambda: {
        "channels": [8, 16, 32, 64, 128], "strides": [2, 2, 2, 2], "num_res_units": 0})
    steps: int = 200
    max_seconds: float | None = None
    learning_rate: float = 3e-3
    batch_size: int = 2
    #: voxels of padding around each training volume, so random crops also shift the anatomy
    #: (the network must not learn where the field of view happened to be)
    shift: int = 8
    seed: int = 0
    device: str = "cpu"
    intensity: dict = dataclasses.field(default_factory=lambda: {
        "kind": "range", "a_min": -1000.0, "a_max": 1500.0, "b_min": 0.0, "b_max": 1.0, "clip": True})


def _pad_to(a: np.ndarray, size, value, margin: int = 0) -> np.ndarray:
    pad = [(margin, margin + max(0, s - n)) for n, s in zip(a.shape, size)]
    return np.pad(a, pad, constant_values=value) if any(p[1] for p in pad) else a


def prepare_pairs(pairs: list[tuple[Volume, Volume]], values: list[int], opts: TrainOptions):
    """CT/label volumes -> normalised images and channel maps on the network grid (numpy)."""
    from .segment.networks.model import labels_to_network, network_grid, to_network

    top = max(int(lab.array.max(initial=0)) for _, lab in pairs)
    lut = np.zeros(max(top, max(values)) + 1, np.int64)
    for channel, value in enumerate(values, start=1):
        lut[value] = channel
    out = []
    for ct, labels in pairs:
        g = network_grid(ct.array.shape, ct.affine, (opts.spacing_mm,) * 3)
        image = to_network(ct.array, g, opts.intensity, "cpu")[0, 0].numpy()
        target = lut[labels_to_network(labels.array.astype(np.int64), g)]
        b0 = float(opts.intensity.get("b_min", 0.0))
        out.append((_pad_to(image, opts.roi_size, b0, opts.shift),
                    _pad_to(target, opts.roi_size, 0, opts.shift)))
    return out


def _crop(rng: np.random.Generator, image: np.ndarray, target: np.ndarray, roi):
    start = [int(rng.integers(0, n - r + 1)) for n, r in zip(image.shape, roi)]
    sl = tuple(slice(s, s + r) for s, r in zip(start, roi))
    return image[sl], target[sl]


def train(pairs: list[tuple[Volume, Volume]], out_dir: str | Path, *, opts: TrainOptions | None = None,
          name: str = "spine-idc vertebrae") -> dict:
    """Train on ``pairs`` (CT, labels) and write a MONAI bundle to ``out_dir``; returns a summary.

    The levels the network learns are those present in the training labels (each becomes one
    output channel, in anatomical order).
    """
    import monai
    import torch
    from monai.losses import DiceCELoss
    import monai.networks.nets as nets

    opts = opts or TrainOptions()
    torch.manual_seed(opts.seed)
    rng = np.random.default_rng(opts.seed)
    values = {int(v) for _, lab in pairs for v in np.unique(lab.array) if v}
    unknown = sorted(v for v in values if v not in coding.LEVEL_BY_VALUE)
    if unknown:  # VerSe's L6, coccyx, T13 (25, 27, 28), unidentified vertebrae: not learnt
        log.warning("label values %s are not in our table: trained as background", unknown)
    present = sorted((v for v in values if v in coding.LEVEL_BY_VALUE),
                     key=lambda v: coding.level_for_value(v).rank)
    if not present:
        raise ValueError("the training labels are empty")
    t0 = time.perf_counter()
    data = prepare_pairs(pairs, present, opts)
    prep_s = time.perf_counter() - t0
    network = {"spatial_dims": 3, "in_channels": 1, **opts.network, "out_channels": len(present) + 1}
    net = getattr(nets, opts.architecture)(**network).to(opts.device)
    optimiser = torch.optim.AdamW(net.parameters(), lr=opts.learning_rate, weight_decay=1e-5)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    losses: list[float] = []
    t1 = time.perf_counter()
    step = 0
    net.train()
    while step < opts.steps and (opts.max_seconds is None or time.perf_counter() - t1 < opts.max_seconds):
        batch = [_crop(rng, *data[int(rng.integers(len(data)))], opts.roi_size) for _ in range(opts.batch_size)]
        x = torch.from_numpy(np.stack([b[0] for b in batch])[:, None]).to(opts.device)
        y = torch.from_numpy(np.stack([b[1] for b in batch])[:, None]).to(opts.device)
        optimiser.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y)
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
        step += 1
    train_s = time.perf_counter() - t1
    channel_def = {"0": "background", **{str(i): coding.level_for_value(v).name
                                          for i, v in enumerate(present, start=1)}}
    summary = {"steps": step, "train_seconds": round(train_s, 1), "prepare_seconds": round(prep_s, 1),
               "first_loss": round(float(np.mean(losses[:10])), 4),
               "last_loss": round(float(np.mean(losses[-10:])), 4), "levels": channel_def}
    _write_bundle(Path(out_dir), net.cpu(), {"_target_": opts.architecture, **network}, channel_def, opts, name, summary,
                  monai.__version__, torch.__version__)
    log.info("trained %d steps in %.1f s (loss %.3f -> %.3f); bundle %s", step, train_s,
             summary["first_loss"], summary["last_loss"], out_dir)
    return summary


def _write_bundle(out: Path, net, network: dict, channel_def: dict, opts: TrainOptions, name: str,
                  summary: dict, monai_version: str, torch_version: str) -> None:
    import torch

    spacing = [opts.spacing_mm] * 3
    inference = {
        "network_def": network,
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
            {"_target_": "Spacingd", "keys": "image", "pixdim": spacing, "mode": "bilinear"},
            _intensity_transform(opts.intensity),
        ]},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": list(opts.roi_size),
                    "sw_batch_size": 4, "overlap": 0.25},
    }
    metadata = {
        "name": name, "version": "0.1.0", "monai_version": monai_version,
        "pytorch_version": torch_version.split("+")[0],
        "description": "Vertebra labels, trained by spine_idc.train",
        "spine_idc": {"training": summary},
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "hounsfield", "num_channels": 1,
                                 "spatial_shape": list(opts.roi_size), "dtype": "float32"}},
            "outputs": {"pred": {"type": "image", "format": "segmentation",
                                 "num_channels": len(channel_def), "dtype": "float32",
                                 "channel_def": channel_def}},
        },
    }
    with atomic_dir(out) as tmp:
        (tmp / "configs").mkdir()
        (tmp / "models").mkdir()
        (tmp / "configs" / "inference.json").write_text(json.dumps(inference, indent=2))
        (tmp / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2))
        torch.save(net.state_dict(), tmp / "models" / "model.pt")


def _intensity_transform(intensity: dict) -> dict:
    """The MONAI transform that states ``intensity`` in the bundle (read back by load_model)."""
    kind = intensity.get("kind", "range")
    if kind == "zscore":
        return {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": bool(intensity.get("nonzero", False))}
    if kind == "minmax":
        return {"_target_": "ScaleIntensityd", "keys": "image", "minv": intensity.get("minv", 0.0),
                "maxv": intensity.get("maxv", 1.0)}
    return {"_target_": "ScaleIntensityRanged", "keys": "image",
            **{k: v for k, v in intensity.items() if k != "kind"}}


def phantom_pairs(seeds, *, levels=None, size: str = "test") -> list[tuple[Volume, Volume]]:
    """(CT, labels) of phantoms ``seeds``, optionally all centred on one range of ``levels``."""
    from .phantom import make_phantom, spec_for_seed

    out = []
    for seed in seeds:
        ph = make_phantom(spec_for_seed(int(seed), size=size, levels=levels))
        out.append((ph.ct, ph.labels))
    return out
