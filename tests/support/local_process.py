"""What the local stand-in servers of the tests (Orthanc, moto's S3, Slurm) share: a free
loopback port, and stopping a child process without leaving it behind.

Nothing here imports pytest, so ``bench/`` can use it too.
"""

from __future__ import annotations

import socket
import subprocess
import time


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


class ChildServer:
    """A server the tests start as a child process: waiting until it answers, stopping it
    (SIGTERM, then kill), and ``with`` support.  Subclasses start ``self.process`` and say in
    :meth:`_answers` whether the server is up: True, False (someone else answers: give up) or
    None (not yet)."""

    start_timeout_s = 30.0
    stop_timeout_s = 10.0
    process: subprocess.Popen | None = None

    def _answers(self) -> bool | None:
        raise NotImplementedError

    def _wait_until_up(self) -> bool:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:  # requests' and urllib's errors are OSErrors
                answer = self._answers()
                if answer is not None:
                    return answer
            except OSError:
                pass
            time.sleep(0.1)
        return False

    def stop(self) -> None:
        """Stop cleanly (SIGTERM); kill it if it has not stopped within ``stop_timeout_s``."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
        self._reap()

    def _reap(self) -> None:
        reap(self.process, self.stop_timeout_s)
        self.process = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
