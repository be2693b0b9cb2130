"""How long Snakemake takes to plan (``-n``) the workflow for cohorts of 1k, 10k and 100k series.

Each cohort is a manifest of synthetic IDC rows, cut into shards as the manifest checkpoint does,
written into a fresh working directory; then ``snakemake -n`` plans every shard job of every
stage (download, convert, segment, finish) and the cohort.  Printed: series, shards, jobs
planned, seconds, and the same with one job per series (``shard_size: 1``) where that is
feasible, the design this replaced.

    .venv/bin/python bench/plan.py [--sizes 1000 10000 100000] [--shard-size 20]

``--no-shared-fs`` plans as the gcp-batch and k8s profiles do: outputs in a GCS bucket (here a
GCS emulator on loopback, ``tests/support/gcs_server.py``) through Snakemake's GCS storage plugin, each
shard job's one output its pack (which carries its marker).  The manifest and shard tables are uploaded first and
kept as the main process's local copies, as after the manifest job.  The emulator answers on
loopback, so this times Snakemake's side; GCS's own latency comes on top.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from spine_idc.manifest import ManifestRow, write_manifest
from spine_idc.pipeline.shards import write_shards

REPO = Path(__file__).resolve().parents[1]


def cohort(n: int) -> list[ManifestRow]:
    rows = []
    for i in range(n):
        uid = f"1.2.826.0.1.3680043.8.498.{10_000_000 + i}"
        rows.append(ManifestRow(
            series_key=uid, series_instance_uid=uid, study_instance_uid=f"{uid}.1", patient_id=f"P{i}",
            modality="CT", series_description="AXIAL", n_instances=300, source="idc",
            collection_id="nlst", body_part="CHEST", license="CC BY 4.0", size_mb=150.0,
            location=f"s3://idc-open-data/{uuid.UUID(int=i)}/", index_version="v25"))
    return rows


BUCKET = "spine-idc-bench"


def plan(n: int, shard_size: int, gcs=None) -> tuple[int, int, float]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # Without a shared filesystem the manifest's outputs are in the bucket and, as local
        # copies, under .snakemake/storage/ of the main process.
        prefix = f"{n}-{shard_size}/run"
        made = work / ".snakemake" / "storage" / "gcs" / BUCKET / prefix if gcs else work
        rows = cohort(n)
        write_manifest(rows, made / "results" / "manifest.tsv")
        (made / "work" / "manifest").mkdir(parents=True)
        (made / "work" / "manifest" / ".snakemake_timestamp").touch()
        shards = write_shards(rows, made / "work" / "shards", shard_size)
        (made / "work" / "shards" / ".snakemake_timestamp").touch()
        cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow" / "Snakefile"),
               "--directory", str(work), "--configfile", str(REPO / "config.yaml"), "-n", "--quiet",
               "rules", "--config", f"shard_size={shard_size}"]
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        if gcs:
            env.update(gcs.client_env())
            gcs.upload_folder(made, prefix)
            cmd[cmd.index("--config"):cmd.index("--config")] = [
                "--default-storage-provider", "gcs", "--default-storage-prefix", f"gs://{BUCKET}/{prefix}",
                "--keep-storage-local-copies"]
        started = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        seconds = time.perf_counter() - started
        if out.returncode != 0:
            raise SystemExit(out.stderr[-3000:])
        total = re.search(r"^total\s+(\d+)", out.stdout + out.stderr, re.M)
        return len(shards), int(total.group(1)) if total else -1, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    ap.add_argument("--shard-size", type=int, default=20)
    ap.add_argument("--per-series-up-to", type=int, default=10_000,
                    help="also plan one job per series (shard_size 1) for cohorts up to this size")
    ap.add_argument("--no-shared-fs", action="store_true",
                    help="plan with a default storage provider (GCS emulator), as gcp-batch and k8s do")
    args = ap.parse_args()
    with contextlib.ExitStack() as stack:
        gcs = None
        if args.no_shared_fs:
            sys.path.insert(0, str(REPO / "tests"))
            from support.gcs_server import start_gcs

            gcs = stack.enter_context(start_gcs(Path(stack.enter_context(tempfile.TemporaryDirectory())), BUCKET))
            print("no shared filesystem: outputs in a GCS bucket (emulator on loopback)")
        print(f"{'series':>8} {'shard size':>10} {'shards':>7} {'jobs':>7} {'plan s':>7}")
        for n in args.sizes:
            sizes = [args.shard_size] + ([1] if n <= args.per_series_up_to and not gcs else [])
            for size in sizes:
                shards, jobs, seconds = plan(n, size, gcs)
                print(f"{n:>8} {size:>10} {shards:>7} {jobs:>7} {seconds:>7.1f}", flush=True)
    print("(jobs: every job of the plan; the manifest is already made, as after the query)")


if __name__ == "__main__":
    main()
