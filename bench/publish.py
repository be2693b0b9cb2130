"""Time STOW-RS publishing of SEG+SR pairs to a local Orthanc: spine-idc against a plain loop.

Builds one synthetic CT series (512x512, ``--slices`` slices) and ``--pairs`` SEG+SR pairs of it
(distinct UIDs: each pair has other algorithm parameters), starts Orthanc with its DICOMweb
plugin on loopback (``tests/support/orthanc.py``) and publishes the pairs three ways:

* ``publish_series`` on an empty store (look-up, POST of the file's bytes, look-up to verify,
  Orthanc study ID for the viewer URL);
* ``publish_series`` again (every instance already present: one look-up each);
* the baseline a user would write first: dicomweb-client ``store_instances`` of the pydicom
  datasets (re-encoded, no look-ups), on an emptied store.

Prints the best of ``--repeat`` runs in instances/s and MB/s (file bytes).  Usage::

    python bench/publish.py [--pairs 8] [--slices 48] [--repeat 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
import requests

from spine_idc.dicom import AlgorithmInfo, write_seg
from spine_idc.dicom import write_sr
from spine_idc.sources.dicomweb.series import make_client
from spine_idc.measure import measure_vertebrae
from spine_idc.publish import publish_series
from spine_idc.volume import Volume

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.orthanc import UNAVAILABLE_REASON, orthanc_available, start_orthanc  # noqa: E402
from support.dicom_series import load_series, write_synthetic_series  # noqa: E402


def make_pairs(root: Path, n_pairs: int, n_slices: int) -> tuple[list[tuple[Path, Path]], str]:
    write_synthetic_series(root / "ct", n_slices=n_slices, rows=512, columns=512)
    ct, info = load_series(root / "ct")
    labels = np.zeros(ct.array.shape, dtype=np.uint8)
    ni, nj, nk = labels.shape
    labels[ni // 5 : ni * 4 // 5, nj // 4 : nj * 3 // 4, 1 : nk // 2 - 1] = 20
    labels[ni // 5 : ni * 4 // 5, nj // 4 : nj * 3 // 4, nk // 2 + 1 : nk - 1] = 19
    hu = np.where(labels > 0, 200.0, -100.0).astype(np.float32)
    measurements = measure_vertebrae(Volume(hu, ct.affine), Volume(labels, ct.affine),
                                     Volume(labels, ct.affine))
    pairs = []
    for i in range(n_pairs):
        algorithm = AlgorithmInfo(version="0.1.0", parameters={"bench_run": str(i)})
        seg = write_seg(Volume(labels, ct.affine), info, algorithm, root / f"seg{i}.dcm")
        sr = write_sr(measurements, pydicom.dcmread(seg), info, algorithm, root / f"sr{i}.dcm")
        pairs.append((seg, sr))
    return pairs, info.series_instance_uid


def empty(server) -> None:
    for patient in requests.get(f"{server.rest}/patients", timeout=30).json():
        requests.delete(f"{server.rest}/patients/{patient}", timeout=30).raise_for_status()


def report(name: str, seconds: float, n_files: int, n_bytes: int) -> None:
    print(f"{name:<44} {seconds:6.2f} s  {n_files / seconds:7.1f} instances/s  "
          f"{n_bytes / 1e6 / seconds:7.1f} MB/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--slices", type=int, default=48)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if not orthanc_available():
        sys.exit(UNAVAILABLE_REASON)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pairs, key = make_pairs(root, args.pairs, args.slices)
        files = [p for pair in pairs for p in pair]
        n_bytes = sum(p.stat().st_size for p in files)
        print(f"{args.pairs} SEG+SR pairs, {len(files)} instances, {n_bytes / 1e6:.1f} MB "
              f"(SEG {pairs[0][0].stat().st_size / 1e6:.2f} MB each)")
        best: dict[str, float] = {}
        with start_orthanc(root / "orthanc") as server:
            for _ in range(args.repeat):
                empty(server)
                for name in ("publish_series, empty store", "publish_series, all already present"):
                    t0 = time.perf_counter()
                    for seg, sr in pairs:
                        publish_series(seg, sr, url=server.url, auth="none", series_key=key)
                    best[name] = min(best.get(name, np.inf), time.perf_counter() - t0)
                empty(server)
                client = make_client(server.url, auth="none")
                t0 = time.perf_counter()
                for seg, sr in pairs:
                    client.store_instances([pydicom.dcmread(seg), pydicom.dcmread(sr)])
                name = "store_instances loop (baseline)"
                best[name] = min(best.get(name, np.inf), time.perf_counter() - t0)
        for name, seconds in best.items():
            report(name, seconds, len(files), n_bytes)

if __name__ == "__main__":
    main()
