"""Time WADO-RS retrieval of a series from a local Orthanc: spine-idc against plain loops.

Starts Orthanc with its DICOMweb plugin on loopback (see ``tests/support/orthanc.py``), uploads a
phantom series (512x512x300, about 150 MB, by default) and fetches it three ways:

* ``fetch_dicomweb_series``: one series request, the multipart body read as it streams and each
  part written as received;
* dicomweb-client ``iter_series`` (one series request too), each dataset saved with pydicom;
* the baseline a user would write first: a QIDO-RS instance list, then ``retrieve_instance`` for
  each instance in turn, each dataset saved with pydicom; once as is, once with
  ``Accept-Encoding: identity`` (Orthanc otherwise gzips every single-instance answer).

All ask for the stored transfer syntax (``transfer-syntax=*``).  Prints the best of
``--repeat`` runs in MB/s and instances/s.  Usage::

    python bench/download_dicomweb.py [--size realistic|test] [--series 1] [--repeat 3]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from dicomweb_client import DICOMwebClient

from spine_idc.sources.dicomweb.series import fetch_dicomweb_series, make_client
from spine_idc.phantom import write_phantom

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.orthanc import UNAVAILABLE_REASON, orthanc_available, start_orthanc, upload  # noqa: E402

ANY_TS = (("application/dicom", "*"),)


def spine_idc_fetch(url: str, study: str, series: str, dest: Path) -> int:
    client = make_client(url, auth="none")
    return fetch_dicomweb_series(client, study, series, dest, series_key=series).files


def iter_series_fetch(url: str, study: str, series: str, dest: Path) -> int:
    client = DICOMwebClient(url)
    n = 0
    for ds in client.iter_series(study, series, media_types=ANY_TS):
        ds.save_as(dest / f"{ds.SOPInstanceUID}.dcm")
        n += 1
    return n


def per_instance_fetch(url: str, study: str, series: str, dest: Path, *,
                       headers: dict | None = None) -> int:
    client = DICOMwebClient(url, headers=headers)
    instances = client.search_for_instances(study, series, fields=["SOPInstanceUID"], get_remaining=True)
    for item in instances:
        sop = item["00080018"]["Value"][0]
        ds = client.retrieve_instance(study, series, sop, media_types=ANY_TS)
        ds.save_as(dest / f"{sop}.dcm")
    return len(instances)


METHODS = {
    "spine-idc fetch_dicomweb_series": spine_idc_fetch,
    "dicomweb-client iter_series": iter_series_fetch,
    "retrieve_instance loop (baseline)": per_instance_fetch,
    # Orthanc gzips each single-instance answer when asked to (requests asks by default), which
    # costs it ~40 ms per 0.5 MB slice on loopback; a series answer is never compressed.
    "retrieve_instance loop, no gzip":
        lambda *a: per_instance_fetch(*a, headers={"Accept-Encoding": "identity"}),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="realistic", choices=["test", "realistic"])
    ap.add_argument("--series", type=int, default=1,
                    help="phantom series to upload and fetch (seeds 0..N-1)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if not orthanc_available():
        sys.exit(UNAVAILABLE_REASON)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        uploads = []
        t0 = time.perf_counter()
        for seed in range(args.series):
            files, _labels = write_phantom(seed, root / f"phantom{seed}", size=args.size)
            uploads.append(files)
        print(f"phantoms: {sum(map(len, uploads))} instances in {time.perf_counter() - t0:.1f} s")
        with start_orthanc(root / "orthanc") as orthanc:
            t0 = time.perf_counter()
            for files in uploads:
                upload(orthanc, files)
            print(f"upload to Orthanc: {time.perf_counter() - t0:.1f} s")
            series = [_uids(files[0]) for files in uploads]
            n_bytes = sum(f.stat().st_size for files in uploads for f in files)
            n_instances = sum(map(len, uploads))
            best = {}
            names = list(METHODS)
            for r in range(args.repeat):
                for name in names[r % len(names):] + names[: r % len(names)]:  # no method always first
                    method = METHODS[name]
                    out = root / "out"
                    shutil.rmtree(out, ignore_errors=True)
                    t0 = time.perf_counter()
                    got = 0
                    for i, (study, uid) in enumerate(series):
                        dest = out / str(i)
                        dest.mkdir(parents=True)
                        got += method(orthanc.url, study, uid, dest)
                    seconds = time.perf_counter() - t0
                    if got != n_instances:
                        sys.exit(f"{name}: {got} instances, expected {n_instances}")
                    best[name] = min(best.get(name, float("inf")), seconds)
    baseline = best["retrieve_instance loop (baseline)"]
    print(f"\n{args.series} series, {n_instances} instances, {n_bytes / 1e6:.1f} MB; "
          f"best of {args.repeat}")
    print(f"{'method':36} {'s':>7} {'MB/s':>8} {'inst/s':>8} {'speed-up':>9}")
    for name, seconds in best.items():
        print(f"{name:36} {seconds:7.2f} {n_bytes / 1e6 / seconds:8.1f} {n_instances / seconds:8.0f} "
              f"{baseline / seconds:8.1f}x")


def _uids(path: Path) -> tuple[str, str]:
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)


if __name__ == "__main__":
    main()
