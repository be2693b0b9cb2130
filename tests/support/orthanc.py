"""Start a real Orthanc with the DICOMweb plugin on loopback, for tests and benchmarks.

Orthanc (Debian ``orthanc`` + ``orthanc-dicomweb``; ``.ci/run`` installs them) runs as a child
process with its own JSON configuration, storage and log in a given folder, on a free loopback
HTTP port, with the DICOM (DIMSE) server disabled.  Tests skip when :func:`orthanc_available`
is false::

    with start_orthanc(tmp_path) as server:
        upload(server, files)
        client = make_client(server.url, auth="none")

Nothing here imports pytest, so ``bench/`` can use it too.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path

from .local_process import ChildServer, free_port

import requests

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = Path(
    os.environ.get("SPINE_IDC_ORTHANC_DICOMWEB_PLUGIN", "/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
)


def orthanc_available() -> bool:
    """Whether the Orthanc binary and its DICOMweb plugin are installed."""
    return Path(ORTHANC).is_file() and os.access(ORTHANC, os.X_OK) and DICOMWEB_PLUGIN.is_file()


UNAVAILABLE_REASON = (
    f"Orthanc with the DICOMweb plugin is not installed ({ORTHANC}, {DICOMWEB_PLUGIN}); "
    "install the Debian packages orthanc and orthanc-dicomweb"
)


class Orthanc(ChildServer):
    """One Orthanc process; storage lives in ``root`` and survives :meth:`restart`.

    Attributes
    ----------
    url:
        The DICOMweb root, ``http://127.0.0.1:PORT/dicom-web``.
    rest:
        The Orthanc REST root, ``http://127.0.0.1:PORT``.
    auth:
        ``(user, password)`` of the first registered user, or ``None`` when authentication is off.
    """

    stop_timeout_s = 15.0

    def __init__(self, root: Path, *, users: Mapping[str, str] | None = None, extra: Mapping | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.users = dict(users or {})
        self.extra = dict(extra or {})
        self.port = 0
        self.process: subprocess.Popen | None = None
        self.log_path = self.root / "orthanc.log"
        self.name = f"spine-idc-test-{uuid.uuid4().hex[:12]}"  # tells our server from a stranger
        atexit.register(self.stop)  # no orphan if the caller forgets (or a test run is interrupted)

    @property
    def rest(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.rest}/dicom-web"

    @property
    def auth(self) -> tuple[str, str] | None:
        return next(iter(self.users.items()), None)

    def _write_config(self) -> Path:
        storage = self.root / "storage"
        config = {
            "Name": self.name,
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "HttpPort": self.port,
            "DicomServerEnabled": False,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": bool(self.users),
            "RegisteredUsers": self.users,
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "SaveJobs": False,
            "HttpThreadsCount": 8,
            **self.extra,
        }
        path = self.root / "orthanc.json"
        path.write_text(json.dumps(config, indent=2))
        return path

    def start(self) -> Orthanc:
        """Start on the current port (a fresh free one the first time); wait until it answers."""
        if self.process is not None:
            raise RuntimeError("Orthanc is already running")
        fresh_port = self.port == 0
        for _attempt in range(5):
            if fresh_port:
                self.port = free_port()
            config = self._write_config()
            with self.log_path.open("ab") as log:
                self.process = subprocess.Popen([ORTHANC, str(config)], stdout=log, stderr=subprocess.STDOUT)
            if self._wait_until_up():
                return self
            # Lost the port to another process between choosing and binding it: try another one.
            self._reap()
            if not fresh_port:
                time.sleep(0.5)  # the same port on restart: wait for the old socket to go
        raise RuntimeError(f"Orthanc did not start; log {self.log_path}:\n{self.log_tail()}")

    def _answers(self) -> bool | None:
        answer = requests.get(f"{self.rest}/system", auth=self.auth, timeout=2)
        return answer.json().get("Name") == self.name if answer.ok else None

    def restart(self) -> Orthanc:
        """Stop and start again on the same port, keeping the stored instances."""
        self.stop()
        return self.start()

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def start_orthanc(
    tmp_dir: Path, *, users: Mapping[str, str] | None = None, extra_config: Mapping | None = None
) -> Orthanc:
    """Start Orthanc with the DICOMweb plugin, storing under ``tmp_dir``; return it running.

    Parameters
    ----------
    tmp_dir:
        Folder for the configuration, storage and ``orthanc.log`` (created if missing).
    users:
        ``{user: password}``; when given, HTTP basic authentication is required.
    extra_config:
        Orthanc configuration options that override the defaults (e.g. ``LimitFindResults``).
    """
    return Orthanc(Path(tmp_dir), users=users, extra=extra_config).start()


def upload(orthanc: Orthanc, files: Iterable[Path]) -> list[str]:
    """POST each DICOM file to ``/instances``; return the Orthanc instance IDs."""
    ids = []
    with requests.Session() as session:
        session.auth = orthanc.auth
        for path in files:
            response = session.post(f"{orthanc.rest}/instances", data=Path(path).read_bytes(), timeout=60)
            response.raise_for_status()
            ids.append(response.json()["ID"])
    return ids

