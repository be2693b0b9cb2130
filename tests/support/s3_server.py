"""A real S3 server on loopback (moto's), holding series in IDC's bucket layout.

moto runs as a child process (``python -m moto.server``) on a free loopback port, so a test can
stop it like a real server and a benchmark does not share the interpreter with it.  Buckets get
a public-read policy, as IDC's do, so that s5cmd's unsigned requests are allowed (moto answers
unsigned GETs on a bucket without one with 403, as S3 does)::

    with start_moto(tmp_path) as server:
        series = upload_series(server.url, "idc-open-data", files)
        fetch_s3_series(series.location, dest, series_key="k", endpoint_url=server.url)
        assert series.mismatches(dest) == []

Uploads use boto3 with explicit dummy keys (moto accepts any), never the user's environment.
Nothing here imports pytest, so ``bench/`` can use it too.
"""

from __future__ import annotations

import atexit
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path

from .local_process import ChildServer, free_port

IDC_BUCKET = "idc-open-data"


class MotoServer(ChildServer):
    """One ``moto.server`` child process on ``127.0.0.1:<port>``.

    Attributes
    ----------
    url:
        The S3 endpoint, ``http://127.0.0.1:PORT`` (s5cmd's ``--endpoint-url``).
    port:
        Its port (a free one, chosen at :meth:`start`).
    """

    def __init__(self, log_path: Path | None = None):
        self.port = 0
        self.process: subprocess.Popen | None = None
        self.log_path = Path(log_path) if log_path else None
        atexit.register(self.stop)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoServer:
        if self.process is not None:
            raise RuntimeError("the moto server is already running")
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        for _attempt in range(5):
            self.port = free_port()
            log = self.log_path.open("ab") if self.log_path else subprocess.DEVNULL
            try:
                self.process = subprocess.Popen(
                    [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                )
            finally:
                if log is not subprocess.DEVNULL:
                    log.close()
            if self._wait_until_up():
                return self
            self._reap()  # lost the port to another process between choosing and binding it
        raise RuntimeError(f"the moto server did not start (log: {self.log_path})")

    def _answers(self) -> bool | None:
        with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=2) as answer:
            return True if answer.status == 200 else None


def start_moto(log_dir: Path | None = None) -> MotoServer:
    """Start moto's S3 server on a free loopback port; return it running (a context manager).

    ``log_dir``, when given, receives ``moto.log`` (one line per request).
    """
    return MotoServer(Path(log_dir) / "moto.log" if log_dir else None).start()


def s3_client(endpoint: str):
    """A boto3 S3 client for ``endpoint`` with dummy keys: for putting test data, never reading."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
    )


def ensure_public_bucket(endpoint: str, bucket: str = IDC_BUCKET, *, client=None) -> None:
    """Create ``bucket`` if missing, readable and listable without credentials, like IDC's."""
    client = client or s3_client(endpoint)
    try:
        client.create_bucket(Bucket=bucket)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    policy = {
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "PublicRead", "Effect": "Allow", "Principal": "*",
            "Action": ["s3:GetObject", "s3:ListBucket"],
            "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
        }],
    }
    client.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))


@dataclasses.dataclass(frozen=True)
class UploadedObject:
    """One object put under a series prefix, and the file it was made from."""

    name: str  # the object name under the prefix (``<uuid>.dcm``), also the downloaded file name
    source: Path
    size: int
    sha256: str
    truncated: bool = False
    extra: bool = False  # not one of the series' files (``extra_files``)


@dataclasses.dataclass(frozen=True)
class UploadedSeries:
    """A series as the server holds it: ``location`` is what the manifest would carry."""

    location: str  # s3://<bucket>/<uuid>/
    objects: tuple[UploadedObject, ...]

    @property
    def n_bytes(self) -> int:
        return sum(o.size for o in self.objects)

    def mismatches(self, folder: Path) -> list[str]:
        """How ``folder`` differs from the objects, file by file (empty when byte-identical)."""
        folder = Path(folder)
        expected = {o.name: o for o in self.objects}
        present = {p.name for p in folder.iterdir()}
        problems = [f"missing {n}" for n in sorted(expected.keys() - present)]
        problems += [f"unexpected {n}" for n in sorted(present - expected.keys())]
        for name in sorted(expected.keys() & present):
            data = (folder / name).read_bytes()
            if len(data) != expected[name].size or hashlib.sha256(data).hexdigest() != expected[name].sha256:
                problems.append(f"differs {name} ({len(data)} bytes, expected {expected[name].size})")
        return problems


def upload_series(
    endpoint: str,
    bucket: str,
    files: Iterable[Path],
    *,
    extra_files: Iterable[Path] = (),
    truncate: Mapping[int, float] | None = None,
    prefix: str | None = None,
) -> UploadedSeries:
    """Put ``files`` under a fresh series prefix in IDC's layout: ``s3://bucket/<uuid>/<uuid>.dcm``.

    Parameters
    ----------
    endpoint:
        The S3 endpoint (``MotoServer.url``).
    bucket:
        Created, with a public-read policy, if missing.
    files:
        The series' DICOM files; each becomes one object with a random UUID name.
    extra_files:
        Files put under the same prefix as well (e.g. an instance of another series: what a
        verification must reject); marked ``extra`` in the result.
    truncate:
        ``{index in files: fraction kept}``: those objects hold only the first part of their
        file (an object cut short at the source).
    prefix:
        The series UUID (default: a random one).
    """
    client = s3_client(endpoint)
    ensure_public_bucket(endpoint, bucket, client=client)
    prefix = prefix or str(uuid.uuid4())
    truncate = dict(truncate or {})
    listed = [(Path(f), False) for f in files] + [(Path(f), True) for f in extra_files]
    unknown = set(truncate) - set(range(len(listed)))
    if unknown:
        raise IndexError(f"truncate names files that are not there: {sorted(unknown)}")
    objects = []
    for index, (path, extra) in enumerate(listed):
        data = path.read_bytes()
        cut = index in truncate
        if cut:
            data = data[: int(len(data) * truncate[index])]
        name = f"{uuid.uuid4()}.dcm"
        client.put_object(Bucket=bucket, Key=f"{prefix}/{name}", Body=data)
        objects.append(UploadedObject(name, path, len(data), hashlib.sha256(data).hexdigest(), cut, extra))
    return UploadedSeries(f"s3://{bucket}/{prefix}/", tuple(objects))


def empty_location(endpoint: str, bucket: str = IDC_BUCKET) -> str:
    """A well-formed series location in an existing public bucket with nothing under it."""
    ensure_public_bucket(endpoint, bucket)
    return f"s3://{bucket}/{uuid.uuid4()}/"

