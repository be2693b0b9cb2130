"""What the local stand-in servers of the tests (Orthanc, moto's S3, Slurm) share: a free
loopback port, and stopping a child process without leaving it behind.

Nothing here imports pytest, so ``bench/`` can use it too.
"""

from __future__ import annotations

import socket
import subprocess


def free_port() -> int:
    """A loopback TCP port nothing listens on (free when asked; bind soon)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def reap(process: subprocess.Popen, timeout_s: float) -> None:
    """Wait for ``process`` to end; kill it if it has not within ``timeout_s``."""
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout_s)
