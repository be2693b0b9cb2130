"""Segment-stage throughput: series per hour, seconds per series by step, peak GPU memory.

Runs the segment stage's own shard pipeline (:mod:`spine_idc.pipeline.segment_runner`: the next series is
read and resampled while the current one is inferred, results written behind) on realistic
phantoms (512x512x300, 0.6-1 mm pixels) for each backend:

* ``monai-wholebody-size``: a SegResNet of the size of MONAI's whole-body CT bundle (init
  filters 32, 105 output channels, 1.5 mm, 96^3 windows) with RANDOM weights, written here as a
  bundle: its labels mean nothing, its arithmetic and memory are those of the real thing;
* ``monai-phantom``: the small UNet that ``spine_idc.train`` trains on phantoms (6 mm), when
  ``--train`` is given (it trains first, about a minute on a CPU);
* ``classical``: the weights-free default (CPU);
* ``totalsegmentator``: when it and its weights are installed.

Published anchors printed beside (not measured here): TotalSegmentator's README, 1 min 17 s for
512x512x280 at 1.5 mm on an RTX 3090; MONAI's whole-body CT bundle, about 6 s per CT at 1.5 mm
with 28.7 GB of GPU memory (its model card).  The goal for the GPU stage on one H100: 1,000
series per hour with the GPU busy more than 80 % of the time.

    python bench/infer.py [--series 6] [--backends monai-wholebody-size,classical] [--train]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from spine_idc import layout
from spine_idc.config import SegmentConfig
from spine_idc.phantom import make_phantom, spec_for_seed
from spine_idc.pipeline import segment_runner
from spine_idc.volume import write_nifti

ANCHORS = [
    ("TotalSegmentator (README), RTX 3090, 512x512x280 @1.5 mm", 77.0, None),
    ("MONAI whole-body CT bundle (model card), 1.5 mm", 6.0, 28.7),
]


def whole_body_sized_bundle(out: Path) -> Path:
    """A bundle with the whole-body bundle's network shape and random weights (timing only)."""
    import torch
    from monai.networks.nets import SegResNet

    net = {"_target_": "SegResNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 105,
           "init_filters": 32, "blocks_down": [1, 2, 2, 4], "blocks_up": [1, 1, 1], "dropout_prob": 0.2}
    # Channel names: 24 of them named as vertebrae so that the level mapping runs too (not the
    # bundle's real channel numbering, which does not matter for timing).
    names = {"0": "background", **{str(i): f"structure_{i}" for i in range(1, 105)}}
    for i, level in zip(range(18, 42), [f"vertebrae_{n}" for n in
                        ["L5", "L4", "L3", "L2", "L1", "T12", "T11", "T10", "T9", "T8", "T7", "T6",
                         "T5", "T4", "T3", "T2", "T1", "C7", "C6", "C5", "C4", "C3", "C2", "C1"]]):
        names[str(i)] = level
    (out / "configs").mkdir(parents=True)
    (out / "models").mkdir()
    (out / "configs" / "inference.json").write_text(json.dumps({
        "network_def": net,
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
            {"_target_": "Spacingd", "keys": "image", "pixdim": [1.5, 1.5, 1.5]},
            {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -1024, "a_max": 1024,
             "b_min": 0, "b_max": 1, "clip": True}]},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [96, 96, 96], "sw_batch_size": 4}}))
    (out / "configs" / "metadata.json").write_text(json.dumps({
        "name": "whole-body-sized (random weights)",
        "network_data_format": {"outputs": {"pred": {"channel_def": names}}}}))
    kwargs = {k: v for k, v in net.items() if k != "_target_"}
    torch.save(SegResNet(**kwargs).state_dict(), out / "models" / "model.pt")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", type=int, default=6)
    ap.add_argument("--backends", default=None,
                    help="default: monai-wholebody-size,totalsegmentator,classical on a GPU; "
                         "classical alone on a CPU (the whole-body-size network takes minutes a "
                         "series there)")
    ap.add_argument("--train", action="store_true", help="also train and time the phantom UNet")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--sw-batch-size", type=int, default=4)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    import torch

    cuda = torch.cuda.is_available() and args.device != "cpu"
    device = torch.cuda.get_device_name(0) if cuda else f"CPU ({torch.get_num_threads()} threads)"
    tmp = Path(args.workdir or tempfile.mkdtemp(prefix="bench-infer-"))
    t = time.perf_counter()
    converted = []
    for seed in range(args.series):
        folder = tmp / "convert" / f"s{seed:03d}"
        if not (folder / layout.VOLUME).exists():
            folder.mkdir(parents=True, exist_ok=True)
            write_nifti(make_phantom(spec_for_seed(seed, size="realistic")).ct, folder / layout.VOLUME)
        converted.append(folder)
    print(f"{args.series} realistic phantoms (512x512x300) ready in {time.perf_counter() - t:.0f} s; device: {device}")

    backends = args.backends or ("monai-wholebody-size,totalsegmentator,classical" if cuda else "classical")
    configs: dict[str, SegmentConfig] = {}
    for name in backends.split(","):
        if name == "monai-wholebody-size":
            model = tmp / "wholebody-size"
            if not model.exists():
                whole_body_sized_bundle(model)
            configs[name] = SegmentConfig.of("monai", model=str(model), device=args.device,
                                             sw_batch_size=args.sw_batch_size)
        elif name == "classical":
            configs[name] = SegmentConfig.of("classical")
        elif name == "totalsegmentator":
            configs[name] = SegmentConfig.of("totalsegmentator", device=args.device)
    if args.train:
        from spine_idc.train import TrainOptions, phantom_pairs, train

        model = tmp / "phantom-unet"
        t = time.perf_counter()
        train(phantom_pairs(range(100, 112), levels=("L1", "sacrum")), model,
              opts=TrainOptions(steps=1500, spacing_mm=6.0, roi_size=(48, 48, 48)))
        print(f"phantom UNet trained in {time.perf_counter() - t:.0f} s")
        configs["monai-phantom"] = SegmentConfig.of("monai", model=str(model), device=args.device)

    rows = []
    for name, cfg in configs.items():
        try:
            t = time.perf_counter()
            backend, _ = segment_runner.backend_for(cfg)
            load_s = time.perf_counter() - t
        except Exception as exc:  # noqa: BLE001 - a backend not installed here is reported, not fatal
            print(f"{name}: not run ({str(exc).splitlines()[0]})")
            continue
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        jobs = [segment_runner.SeriesJob(f.name, f, tmp / "segment" / name / f.name) for f in converted]
        stats: dict = {}
        results = segment_runner.run(jobs, cfg, backend=backend, stats=stats)
        failed = [k for k, f in results.items() if f is not None]
        steps: dict[str, list[float]] = {}
        for job in jobs:
            qc_path = job.out / layout.QC
            if qc_path.exists():
                for step, sec in json.loads(qc_path.read_text()).get("timing_s", {}).items():
                    steps.setdefault(step, []).append(sec)
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
        n = len(jobs)
        rows.append((name, load_s, stats["wall"] / n, 3600 * n / stats["wall"],
                     stats["infer"] / stats["wall"], stats["wait_load"] / n,
                     {k: float(np.median(v)) for k, v in steps.items()}, peak, failed))
        del backend
        if cuda:
            torch.cuda.empty_cache()

    print(f"\nsegment stage, {args.series} series of 512x512x300, one process, device: {device}")
    print(f"{'backend':24s} {'model load':>10s} {'s/series':>9s} {'series/h':>9s} {'busy':>6s} "
          f"{'wait load':>9s}  per-step medians (s)   peak GPU GiB")
    for name, load_s, per, per_h, busy, wait, steps, peak, failed in rows:
        step_text = " ".join(f"{k}={v:.2f}" for k, v in steps.items())
        print(f"{name:24s} {load_s:10.1f} {per:9.2f} {per_h:9.0f} {busy:6.0%} {wait:9.2f}  {step_text}"
              f"  {'-' if peak is None else f'{peak:.1f}'}{'  FAILED: ' + ','.join(failed) if failed else ''}")
    if "monai-wholebody-size" in configs:
        print("monai-wholebody-size has random weights: its infer time and GPU memory are the real "
              "model's, its post-processing and finish times are not (it labels noise)")
    print("\npublished anchors (not measured here):")
    for text, sec, gib in ANCHORS:
        print(f"  {text}: {sec:.0f} s/series = {3600 / sec:.0f} series/h"
              + (f", {gib} GB GPU memory" if gib else ""))
    print("goal on one H100: >= 1000 series/h (3.6 s/series) with the GPU busy > 80%")


if __name__ == "__main__":
    main()
