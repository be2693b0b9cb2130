"""A TCP proxy on loopback that injects network faults, for tests against real local servers.

Put it between a client and a server (moto's S3, Orthanc) and switch what it does while the
client runs::

    with FaultProxy("127.0.0.1", server_port) as proxy:
        client(proxy.url)                          # pass-through
        proxy.cut_after(200_000, connections=3)    # the next 3 connections die mid-response
        proxy.cut_after(1000, how="hang")          # ... or go silent after 1000 bytes
        proxy.down()                               # connection refused, like a stopped server
        proxy.up()                                 # back on the same port
        proxy.stall(connections=1)                 # accepts, reads, never answers
        proxy.http_error(503, connections=2)       # answers the first request with a 503
        proxy.latency_s = 0.03                     # every new connection waits 30 ms first

Everything except :meth:`http_error` is plain TCP and knows nothing of the protocol; a
connection is one client socket forwarded to one fresh server socket, so HTTP/1.1 keep-alive
works as it would without the proxy, and a fault "for the next K connections" counts
connections in the order the client opens them, whether or not the fault strikes (a response
shorter than the byte budget passes whole; s5cmd's bucket HEAD and listing take the first two
of a copy).  Faults queue: the next one starts when the previous one's connections are used.
:attr:`stats` counts what happened, so a test can check that a fault really struck.

Nothing here imports pytest, so ``bench/`` can use it too.
"""

from __future__ import annotations

import dataclasses
import enum
import socket
import struct
import threading
import time

BUFFER = 64 * 1024
REBIND_TIMEOUT_S = 5.0


class Mode(enum.Enum):
    PASS = "pass"
    CUT = "cut"  # forward the first N response bytes of a connection, then reset both sides
    STALL = "stall"  # accept and read, send nothing back, close only when the proxy stops
    HTTP_ERROR = "http-error"  # read one request head, answer with an error status, close


@dataclasses.dataclass
class ProxyStats:
    """What the proxy has seen since it started (or since :meth:`FaultProxy.reset_stats`)."""

    connections: int = 0  # accepted
    cut: int = 0  # connections reset after their byte budget
    stalled: int = 0
    http_errors: int = 0
    bytes_to_client: int = 0
    bytes_to_server: int = 0


@dataclasses.dataclass
class _Fault:
    mode: Mode
    remaining: int  # connections still to receive it; the fault expires at 0
    cut_after: int = 0
    how: str = "reset"
    status: int = 503


def _hard_close(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0), like a server process that died.

    ``shutdown(SHUT_RD)`` first wakes a thread blocked in ``recv`` on this socket (a plain
    ``close`` does not on Linux) without sending the peer a FIN.
    """
    for step in (
        lambda: sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)),
        lambda: sock.shutdown(socket.SHUT_RD),
        sock.close,
    ):
        try:
            step()
        except OSError:
            pass


class FaultProxy:
    """Forward ``127.0.0.1:<port>`` to ``target_host:target_port``, with faults on demand.

    Parameters
    ----------
    target_host, target_port:
        The real server.
    host:
        The loopback address to listen on.

    Attributes
    ----------
    port:
        The proxy's port (a free one, chosen at :meth:`start`; kept across :meth:`down`/:meth:`up`).
    url:
        ``http://host:port``, the address clients use instead of the server's.
    """

    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1"):
        self.target = (target_host, int(target_port))
        self.host = host
        self.port = 0
        self.stats = ProxyStats()
        self.latency_s = 0.0  # added before each new connection reaches the server (a WAN's RTT)
        self._faults: list[_Fault] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._open: set[socket.socket] = set()
        self._gone = threading.Event()  # set when the server "goes away" (down, stop)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- life cycle -----------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._listen()
        return self

    def stop(self) -> None:
        """Stop listening and reset every open connection."""
        self._close_listener()
        self._reset_all()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- faults ---------------------------------------------------------------------------------

    def passthrough(self) -> None:
        """Forget pending faults: forward everything (does not bring a :meth:`down` proxy up)."""
        with self._lock:
            self._faults.clear()

    def cut_after(self, nbytes: int, *, connections: int = 1, how: str = "reset") -> None:
        """Each of the next ``connections`` connections fails after ``nbytes`` of response.

        The budget counts bytes from the server to the client over the connection's life
        (all the responses a keep-alive connection carries).  ``how`` the client sees it:

        ``"reset"``
            ``connection reset by peer`` (a crashed host, a middlebox dropping the flow);
        ``"fin"``
            a clean end of stream, what a killed server process sends: only a client that
            checks Content-Length notices the response is short;
        ``"hang"``
            nothing more, ever: the connection stays open and silent until :meth:`down` or
            :meth:`stop` (a server stuck mid-transfer; catches clients without a read timeout).
        """
        if how not in ("reset", "fin", "hang"):
            raise ValueError(f"how must be 'reset', 'fin' or 'hang', not {how!r}")
        self._push(_Fault(Mode.CUT, connections, cut_after=int(nbytes), how=how))

    def stall(self, *, connections: int = 1) -> None:
        """The next ``connections`` connections are accepted and read but never answered."""
        self._push(_Fault(Mode.STALL, connections))

    def http_error(self, status: int = 503, *, connections: int = 1) -> None:
        """The next ``connections`` connections get ``status`` for their first request, then close.

        The one fault that speaks HTTP/1.1: it reads a request head (not its body) and writes a
        minimal response with ``Connection: close``.
        """
        self._push(_Fault(Mode.HTTP_ERROR, connections, status=int(status)))

    def down(self) -> None:
        """The server is gone: reset open connections and refuse new ones (ECONNREFUSED)."""
        self._close_listener()
        self._reset_all()

    def up(self) -> None:
        """Listen again, on the same port."""
        if self._listener is None:
            self._listen()

    @property
    def is_up(self) -> bool:
        return self._listener is not None

    def reset_stats(self) -> None:
        with self._lock:
            self.stats = ProxyStats()

    # -- internals ------------------------------------------------------------------------------

    def _push(self, fault: _Fault) -> None:
        if fault.remaining < 1:
            raise ValueError("a fault needs connections >= 1")
        with self._lock:
            self._faults.append(fault)

    def _next_fault(self) -> _Fault | None:
        with self._lock:
            while self._faults and self._faults[0].remaining <= 0:
                self._faults.pop(0)
            if not self._faults:
                return None
            fault = self._faults[0]
            fault.remaining -= 1
            return fault

    def _listen(self) -> None:
        deadline = time.monotonic() + REBIND_TIMEOUT_S
        while True:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((self.host, self.port))
                break
            except OSError:
                sock.close()
                # Coming back up on the port we held: someone may have taken it meanwhile.
                if self.port == 0 or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        if self._gone.is_set():
            self._gone = threading.Event()
        sock.listen(128)
        sock.settimeout(0.2)
        self.port = sock.getsockname()[1]
        self._listener = sock
        self._accept_thread = threading.Thread(target=self._accept_loop, args=(sock,), daemon=True,
                                               name=f"faultproxy-accept-{self.port}")
        self._accept_thread.start()

    def _close_listener(self) -> None:
        sock, self._listener = self._listener, None
        if sock is not None:
            sock.close()
        thread, self._accept_thread = self._accept_thread, None
        if thread is not None:
            thread.join(timeout=2)

    def _reset_all(self) -> None:
        self._gone.set()  # wakes the connections that hang, so they are reset too
        with self._lock:
            socks, self._open = list(self._open), set()
        for sock in socks:
            _hard_close(sock)

    def _track(self, *socks: socket.socket) -> None:
        with self._lock:
            self._open.update(socks)

    def _untrack(self, *socks: socket.socket) -> None:
        with self._lock:
            self._open.difference_update(socks)

    def _accept_loop(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed by down() or stop()
            client.settimeout(None)
            self._track(client)  # before down() could miss it
            with self._lock:
                self.stats.connections += 1
            fault = self._next_fault()
            threading.Thread(target=self._serve, args=(client, fault), daemon=True,
                             name=f"faultproxy-conn-{self.port}").start()

    def _serve(self, client: socket.socket, fault: _Fault | None) -> None:
        if fault is not None and fault.mode is Mode.STALL:
            with self._lock:
                self.stats.stalled += 1
            self._drain(client)
            return
        if fault is not None and fault.mode is Mode.HTTP_ERROR:
            self._answer_error(client, fault.status)
            return
        if self.latency_s > 0:
            time.sleep(self.latency_s)
        try:
            server = socket.create_connection(self.target, timeout=10)
            server.settimeout(None)
        except OSError:
            self._untrack(client)
            _hard_close(client)  # the real server is down too: the client sees a reset
            return
        self._track(server)
        cut = fault if fault is not None and fault.mode is Mode.CUT else None
        upstream = threading.Thread(target=self._pump, args=(client, server, None, False), daemon=True)
        upstream.start()
        if cut is None:
            self._pump(server, client, None, True)
        else:
            self._pump(server, client, cut.cut_after, True, how=cut.how)
        upstream.join()
        self._untrack(client, server)
        client.close()
        server.close()

    def _pump(self, src: socket.socket, dst: socket.socket, budget: int | None, to_client: bool,
              *, how: str = "reset") -> None:
        """Copy ``src`` to ``dst`` until EOF; end both once ``budget`` bytes have gone through."""
        sent = 0
        graceful = False
        try:
            while True:
                want = BUFFER if budget is None else min(BUFFER, budget - sent)
                if want <= 0:
                    with self._lock:
                        self.stats.cut += 1
                    if how == "hang":
                        self._gone.wait()
                    elif how == "fin":
                        dst.shutdown(socket.SHUT_RDWR)  # FIN to the client
                        graceful = True
                    break
                data = src.recv(want)
                if not data:
                    dst.shutdown(socket.SHUT_WR)  # pass the half-close on; the other way goes on
                    return
                with self._lock:  # counted before sending, so a client that has it sees it counted
                    if to_client:
                        self.stats.bytes_to_client += len(data)
                    else:
                        self.stats.bytes_to_server += len(data)
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        # Cut, or one side failed: reset both, which also ends the pump going the other way.
        _hard_close(src)
        if graceful:
            dst.close()
        else:
            _hard_close(dst)

    def _drain(self, client: socket.socket) -> None:
        try:
            while client.recv(BUFFER):
                pass
        except OSError:
            pass
        self._untrack(client)
        _hard_close(client)

    def _answer_error(self, client: socket.socket, status: int) -> None:
        try:
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 65536:
                chunk = client.recv(4096)
                if not chunk:
                    break
                head += chunk
            body = f"fault injected by the test proxy: {status}\n".encode()
            with self._lock:
                self.stats.http_errors += 1
            client.sendall(
                f"HTTP/1.1 {status} Injected Fault\r\nContent-Type: text/plain\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body
            )
        except OSError:
            pass
        self._untrack(client)
        try:
            client.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        client.close()
