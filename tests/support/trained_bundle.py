"""A small vertebra network trained here on phantoms, as a MONAI bundle: the ``bundle`` fixture
for the tests that run the monai backend (import it into a test module to use it)."""

from __future__ import annotations

from pathlib import Path

import pytest

LEVELS = ("L1", "sacrum")
TRAIN_SEEDS = range(100, 112)
HELD_BACK = (200, 201)


@pytest.fixture(scope="session")
def bundle(tmp_path_factory) -> Path:
    """A small UNet trained on CPU on 12 L1-sacrum phantoms (about a minute), as a MONAI bundle.

    Shared by the xdist workers through a lock, so it is trained once per run.
    """
    import os

    import torch
    from filelock import FileLock

    from spine_idc.train import TrainOptions, phantom_pairs, train

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # this run's folder, shared by its workers
    out = root / "trained-bundle"
    with FileLock(str(root / "trained-bundle.lock")):
        if not (out / "models" / "model.pt").exists():
            torch.set_num_threads(2)
            summary = train(phantom_pairs(TRAIN_SEEDS, levels=LEVELS), out,
                            opts=TrainOptions(steps=1500, spacing_mm=6.0, roi_size=(48, 48, 48)))
            assert summary["last_loss"] < 0.5 * summary["first_loss"], summary
    return out
