"""Running the real workflow from tests: ``snakemake`` as a subprocess, and checks of its outputs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pydicom

from .dciodvfy import dciodvfy_errors

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def snakemake(workdir: Path, *config: str, check: bool = True, popen: bool = False):
    cmd = [
        sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow" / "Snakefile"),
        "--directory", str(workdir), "--configfile", str(REPO / "config.yaml"),
        "--cores", "2", "--keep-going", "--rerun-incomplete",
        *[c for c in config if c.startswith("--")],
        "--config", *[c for c in config if not c.startswith("--")],
    ]
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    if popen:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if check and out.returncode != 0:
        logs = "\n".join(p.read_text()[-2000:] for p in (workdir / "logs").rglob("*.log"))
        raise AssertionError(f"snakemake failed:\n{out.stderr[-4000:]}\n--- job logs ---\n{logs}")
    return out


def check_outputs(workdir: Path, keys: list[str]) -> pd.DataFrame:
    for key in keys:
        for name in ("seg.dcm", "sr.dcm"):
            path = workdir / "results" / "series" / key / name
            assert path.exists(), f"{path} missing"
            assert dciodvfy_errors(path) == [], f"{path} fails dciodvfy"
    seg = pydicom.dcmread(workdir / "results" / "series" / keys[0] / "seg.dcm")
    import highdicom as hd

    assert len(hd.seg.Segmentation.from_dataset(seg).segment_numbers) >= 1
    table = pd.read_parquet(workdir / "results" / "cohort" / "measurements.parquet")
    assert set(table["series_key"]) == set(keys)
    return table


def _keys(workdir: Path) -> list[str]:
    manifest = pd.read_csv(workdir / "results" / "manifest.tsv", sep="\t", dtype=str)
    return list(manifest["series_key"])
