"""A Google Cloud Storage stand-in on loopback (``gcp-storage-emulator`` from PyPI).

The real ``google-cloud-storage`` client, and so Snakemake's GCS storage plugin, talks to it when
``STORAGE_EMULATOR_HOST`` names it (anonymous credentials, no project needed)::

    with start_gcs(tmp_path, bucket="spine-idc") as server:
        env = {**os.environ, **server.client_env()}

Nothing here imports pytest, so ``bench/`` can use it too.
"""

from __future__ import annotations

import atexit
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

from .local_process import ChildServer, free_port


def gcs_emulator_available() -> bool:
    return shutil.which("gcp-storage-emulator", path=str(Path(sys.executable).parent)) is not None


class GcsServer(ChildServer):
    """One emulator process on ``127.0.0.1:<port>`` keeping its objects under ``data_dir``."""

    def __init__(self, data_dir: Path, bucket: str):
        self.data_dir, self.bucket = Path(data_dir), bucket
        self.port = 0
        self.process: subprocess.Popen | None = None
        atexit.register(self.stop)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client_env(self) -> dict[str, str]:
        """What a process needs for its Google client to use this server, not Google's."""
        return {"STORAGE_EMULATOR_HOST": self.url, "GOOGLE_CLOUD_PROJECT": "spine-idc-test", "SNAKEMAKE_STORAGE_GCS_PROJECT": "spine-idc-test"}

    def upload_folder(self, root: Path, prefix: str) -> int:
        """Put every file under ``root`` into the bucket under ``prefix``; return how many."""
        from concurrent.futures import ThreadPoolExecutor

        from google.api_core.client_options import ClientOptions
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        client = storage.Client(project="spine-idc-test", credentials=AnonymousCredentials(),
                                client_options=ClientOptions(api_endpoint=self.url))
        bucket = client.bucket(self.bucket)
        files = [p for p in Path(root).rglob("*") if p.is_file()]
        with ThreadPoolExecutor(2) as pool:  # the emulator drops connections beyond a few
            list(pool.map(lambda p: bucket.blob(f"{prefix}/{p.relative_to(root).as_posix()}")
                          .upload_from_filename(p), files))
        return len(files)

    def start(self) -> GcsServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        exe = Path(sys.executable).parent / "gcp-storage-emulator"
        log = open(self.data_dir.parent / "gcs-emulator.log", "ab")
        self.process = subprocess.Popen(
            [str(exe), "--data-dir", str(self.data_dir), "start", "--host", "127.0.0.1",
             "--port", str(self.port), "--default-bucket", self.bucket, "--quiet"],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        if not self._wait_until_up():
            self.stop()
            raise RuntimeError(f"the GCS emulator did not start (see {self.data_dir.parent / 'gcs-emulator.log'})")
        return self

    def _answers(self) -> bool | None:
        with urllib.request.urlopen(f"{self.url}/storage/v1/b/{self.bucket}", timeout=2) as reply:
            return reply.status == 200


def start_gcs(tmp_path: Path, bucket: str) -> GcsServer:
    return GcsServer(Path(tmp_path) / "gcs", bucket).start()
