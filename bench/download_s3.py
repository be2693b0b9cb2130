"""Download throughput of :func:`spine_idc.sources.idc.s3.fetch_s3_series` against a local S3
server.

Puts phantom series in IDC's bucket layout on moto's S3 server (a child process on loopback)
and fetches each series three ways, printing MB/s and files/s with the ratio to the slowest:

* ``fetch_s3_series``: spine-idc (s5cmd, ``--numworkers 64``, retries, stall watchdog);
* ``s5cmd (idc-index)``: s5cmd as idc-index calls it (default 256 workers, no watchdog);
* ``boto3 sequential``: one unsigned GET after another, what a plain Python loop does.

moto is a single Python process, so on a small machine the server, not the client, sets the
ceiling; ``--latency-ms`` routes every connection through a proxy that waits that long before
reaching the server, to show what parallel requests buy where a round trip costs what it does
to S3 (tens of ms).  Usage::

    python bench/download_s3.py [--size realistic|test] [--series 1] [--repeat 2] [--latency-ms 0]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the local S3 server and proxy helpers live with the tests

from support.faultproxy import FaultProxy  # noqa: E402
from support.s3_server import IDC_BUCKET, start_moto, upload_series  # noqa: E402

from spine_idc.sources.idc.s3 import fetch_s3_series, find_s5cmd, s5cmd_environment  # noqa: E402
from spine_idc.phantom import write_phantom  # noqa: E402


def spine_idc_fetch(location: str, dest: Path, endpoint: str) -> None:
    fetch_s3_series(location, dest, series_key="bench", endpoint_url=endpoint)


def idc_index_style(location: str, dest: Path, endpoint: str) -> None:
    # idc-index: s5cmd --no-sign-request --endpoint-url E cp 's3://bucket/uuid/*' dest/
    subprocess.run([find_s5cmd(), "--no-sign-request", "--endpoint-url", endpoint, "cp",
                    f"{location}*", f"{dest}/"], check=True, stdout=subprocess.DEVNULL,
                   env=s5cmd_environment())


def boto3_sequential(location: str, dest: Path, endpoint: str) -> None:
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          config=Config(signature_version=UNSIGNED, s3={"addressing_style": "path"}))
    bucket, prefix = location[len("s3://"):].split("/", 1)
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"]
            (dest / item["Key"].rsplit("/", 1)[-1]).write_bytes(body.read())


METHODS = {
    "fetch_s3_series": spine_idc_fetch,
    "s5cmd (idc-index)": idc_index_style,
    "boto3 sequential": boto3_sequential,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="realistic", choices=["test", "realistic"])
    ap.add_argument("--series", type=int, default=1, help="phantom series to upload (seeds 0..N-1)")
    ap.add_argument("--repeat", type=int, default=2, help="runs per method; the best counts")
    ap.add_argument("--latency-ms", type=float, default=0.0,
                    help="wait added to every new connection (through a proxy)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        phantoms = [write_phantom(seed, root / f"phantom{seed}", size=args.size)[0]
                    for seed in range(args.series)]
        print(f"phantoms: {args.series} x {args.size}, {time.perf_counter() - t0:.1f} s", flush=True)
        with start_moto() as server, FaultProxy("127.0.0.1", server.port) as proxy:
            t0 = time.perf_counter()
            uploaded = [upload_series(server.url, IDC_BUCKET, files) for files in phantoms]
            n_files = sum(len(u.objects) for u in uploaded)
            n_bytes = sum(u.n_bytes for u in uploaded)
            print(f"uploaded {n_files} objects, {n_bytes / 1e6:.1f} MB to moto in "
                  f"{time.perf_counter() - t0:.1f} s", flush=True)
            endpoint = server.url
            if args.latency_ms > 0:
                proxy.latency_s = args.latency_ms / 1000
                endpoint = proxy.url
            best: dict[str, float] = {}
            for _ in range(args.repeat):
                for name, method in METHODS.items():
                    dest_root = root / "dest"
                    elapsed = 0.0
                    for i, series in enumerate(uploaded):
                        dest = dest_root / str(i)
                        dest.mkdir(parents=True)
                        t0 = time.perf_counter()
                        method(series.location, dest, endpoint)
                        elapsed += time.perf_counter() - t0
                        problems = series.mismatches(dest)
                        if problems:
                            raise SystemExit(f"{name}: the copy differs: {problems[:3]}")
                    shutil.rmtree(dest_root)
                    best[name] = min(best.get(name, float("inf")), elapsed)
    slowest = max(best.values())
    print(f"\n{n_files} files, {n_bytes / 1e6:.1f} MB, best of {args.repeat}, "
          f"latency {args.latency_ms:g} ms per connection; every copy checked byte for byte")
    print(f"{'method':<20} {'seconds':>8} {'MB/s':>8} {'files/s':>8} {'speed-up':>9}")
    for name, seconds in best.items():
        print(f"{name:<20} {seconds:8.2f} {n_bytes / 1e6 / seconds:8.1f} {n_files / seconds:8.0f} "
              f"{slowest / seconds:8.1f}x")


if __name__ == "__main__":
    main()
