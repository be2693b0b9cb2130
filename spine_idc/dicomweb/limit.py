"""One attempt's wall-clock limit, enforced on every connection the attempt opens.

A socket timeout bounds each read, not a transfer: a server that sends a byte a second never
trips it.  An :class:`AttemptLimit` bounds an attempt as a whole: when it passes, every
connection the attempt opened is shut down (whatever it was waiting for: a connection, headers,
the body), no further retry starts, and no retry waits longer than the time left.
"""

from __future__ import annotations

import socket
import threading
import time

from requests.adapters import HTTPAdapter
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import TimeoutError as Urllib3Timeout
from urllib3.util.retry import Retry


class AttemptLimit:
    """A wall-clock limit on one attempt, enforced on every connection the attempt opens.

    Use as a context manager around the attempt, and give it to :func:`~.client.make_client`
    and :func:`~.retrieve.retrieve_series`.  When ``timeout_s`` has passed, a timer thread shuts
    down the sockets of the attempt's connections (a ``recv`` blocked on a trickling server
    returns at once), the session starts no further retry and waits no longer than the time
    left.
    """

    def __init__(self, timeout_s: float):
        self.timeout_s = float(timeout_s)
        self.deadline = time.monotonic() + self.timeout_s
        self.expired = False
        self._connections: list = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(0.0, self.timeout_s), self._expire)
        self._timer.daemon = True

    def __enter__(self) -> AttemptLimit:
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()
        with self._lock:
            self._connections.clear()

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def track(self, conn) -> None:
        """Shut ``conn`` down when the limit passes (at once, if it has)."""
        with self._lock:
            if conn not in self._connections:
                self._connections.append(conn)
        if self.expired:
            raise Urllib3Timeout(f"the attempt's {self.timeout_s:g} s have passed")

    def _expire(self) -> None:
        self.expired = True
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            sock = getattr(conn, "sock", None)
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def _limited_pools(limit: AttemptLimit) -> dict[str, type]:
    """Connection pools whose connections ``limit`` can shut down."""

    class HTTPPool(HTTPConnectionPool):
        def _get_conn(self, timeout=None):
            conn = super()._get_conn(timeout)
            limit.track(conn)
            return conn

    class HTTPSPool(HTTPSConnectionPool):
        def _get_conn(self, timeout=None):
            conn = super()._get_conn(timeout)
            limit.track(conn)
            return conn

    return {"http": HTTPPool, "https": HTTPSPool}


class LimitedRetry(Retry):
    """The session's retries, none begun and no wait longer than the attempt has left."""

    limit: AttemptLimit | None = None

    def new(self, **kw):
        retry = super().new(**kw)
        retry.limit = self.limit
        return retry

    def is_exhausted(self) -> bool:
        return (self.limit is not None and self.limit.expired) or super().is_exhausted()

    def sleep(self, response=None) -> None:
        if self.limit is None:
            return super().sleep(response)
        wait = self.get_retry_after(response) if response is not None else None
        wait = self.get_backoff_time() if wait is None else wait
        time.sleep(min(wait, self.limit.remaining()))


class LimitedAdapter(HTTPAdapter):
    """An adapter whose connections, timeouts and retries answer to an :class:`AttemptLimit`."""

    def __init__(self, limit: AttemptLimit, **kwargs):
        self._limit = limit
        super().__init__(**kwargs)

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _limited_pools(self._limit)

    def proxy_manager_for(self, proxy, **proxy_kwargs):
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = _limited_pools(self._limit)
        return manager

    def send(self, request, timeout=None, **kwargs):
        left = max(0.001, self._limit.remaining())
        if isinstance(timeout, tuple):
            timeout = tuple(left if t is None else min(t, left) for t in timeout)
        else:
            timeout = left if timeout is None else min(timeout, left)
        return super().send(request, timeout=timeout, **kwargs)

