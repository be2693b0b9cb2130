"""Tell within seconds whether an endpoint can be reached at all, before any series is tried.

Download tools retry each request with backoff (s5cmd's default of 10 retries waits about 90 s
against a refusing server), which is right for a fault that passes and wrong for a machine that
is offline: :func:`probe` resolves the endpoint's host and opens one TCP connection, bounded by a
few seconds, and raises :class:`~spine_idc.errors.NetworkUnreachable` saying what failed.  It
speaks no HTTP and sends no credentials.  Where the environment routes the URL through a proxy
(``https_proxy``/``http_proxy``, not bypassed by ``no_proxy``), the proxy is what is probed.
"""

from __future__ import annotations

import concurrent.futures
import errno
import socket
import time
import urllib.parse
import urllib.request

from ..errors import NetworkUnreachable

DEFAULT_PORTS = {"http": 80, "https": 443}
OFFLINE_HINT = ("this step needs the network: check the connection, proxy and firewall, or the "
                "URL in the configuration; offline, run `make demo`")


def _endpoint(url: str) -> tuple[str, int, str]:
    """``(host, port, how it is reached)`` for ``url``, through the environment's proxy if any."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise NetworkUnreachable(f"{url!r} is not an http(s) URL", hint="fix the URL in the configuration")
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname):
        proxy_parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if proxy_parts.hostname:
            port = proxy_parts.port or DEFAULT_PORTS.get(proxy_parts.scheme, 80)
            return proxy_parts.hostname, port, f" through the proxy {proxy_parts.hostname}:{port}"
    return parts.hostname, parts.port or DEFAULT_PORTS[parts.scheme], ""


def _resolve(host: str, port: int, timeout_s: float) -> list[tuple]:
    # getaddrinfo has no timeout of its own (a dead resolver takes resolv.conf's 5 s x attempts),
    # so it runs in a worker thread that is abandoned if it overruns.
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="probe-dns")
    try:
        future = pool.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
        return future.result(timeout=timeout_s)
    finally:
        pool.shutdown(wait=False)


def _why(err: OSError) -> str:
    if isinstance(err, socket.gaierror):
        return f"DNS lookup failed ({err.strerror or err})"
    if isinstance(err, ConnectionRefusedError):
        return "connection refused (nothing listens on that port)"
    if isinstance(err, TimeoutError):
        return "no answer"
    if err.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return f"no route ({err.strerror})"
    return err.strerror or str(err) or type(err).__name__


def probe(url: str, *, timeout_s: float = 5.0, what: str = "the download endpoint") -> None:
    """Raise :class:`NetworkUnreachable` unless ``url``'s host resolves and accepts a connection.

    Parameters
    ----------
    url:
        An ``http://`` or ``https://`` URL; only its host and port are used.
    timeout_s:
        Bound for the lookup and the connection together.
    what:
        How the message names the endpoint, e.g. ``"IDC's storage endpoint (download.endpoint_url)"``.
    """
    deadline = time.monotonic() + timeout_s
    host, port, via = _endpoint(url)
    target = f"{what} {url} ({host}:{port}{via})"
    try:
        addresses = _resolve(host, port, timeout_s)
    except concurrent.futures.TimeoutError:
        raise NetworkUnreachable(f"cannot reach {target}: DNS lookup gave no answer within "
                                 f"{timeout_s:g} s", hint=OFFLINE_HINT) from None
    except OSError as e:
        raise NetworkUnreachable(f"cannot reach {target}: {_why(e)}", hint=OFFLINE_HINT) from e
    last: OSError | None = None
    for family, kind, proto, _name, address in addresses:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            last = last or TimeoutError()
            break
        with socket.socket(family, kind, proto) as sock:
            sock.settimeout(remaining)
            try:
                sock.connect(address)
                return
            except OSError as e:
                last = e
    why = _why(last) if last is not None else "no address"
    if isinstance(last, TimeoutError):
        why = f"no answer within {timeout_s:g} s"
    raise NetworkUnreachable(f"cannot reach {target}: {why}", hint=OFFLINE_HINT) from last
