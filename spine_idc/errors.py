"""The package's error hierarchy.

Every error carries enough context for a person reading a log or ``failures.csv`` to know which
series failed, why, and what to do about it.  Bad input is a :class:`SeriesError`: the workflow
records it for that series and goes on with the others.  Anything else is a bug or a broken
installation and is allowed to stop the job.  A fault of the machine (a full disk, a read-only
folder, an I/O error, no file handles or memory left: :func:`machine_fault`) is never recorded
against a series, whatever it was raised as: the job fails, and a later run redoes the work.
"""

from __future__ import annotations

import errno


class SpineIdcError(Exception):
    """Base class of all errors raised on purpose by spine-idc."""

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class ConfigError(SpineIdcError):
    """The configuration is missing, malformed, or fails its schema."""


class PackError(SpineIdcError):
    """A shard's pack (spine_idc.pipeline.packs) is unreadable or holds what packs never hold."""


class ManifestError(SpineIdcError):
    """A manifest table is malformed or fails its schema."""


class SeriesError(SpineIdcError):
    """One series cannot be processed; the batch records it and continues.

    Parameters
    ----------
    series:
        The series key (normally the SeriesInstanceUID) the error is about.
    reason:
        A short, stable, machine-readable code such as ``"blank-uid"`` or ``"missing-slices"``;
        it becomes the ``reason`` column of ``failures.csv``.
    message:
        What went wrong, in words, naming the file where one is to blame.
    path:
        The offending file, if one is.
    """

    def __init__(
        self,
        series: str,
        reason: str,
        message: str,
        *,
        path: str | None = None,
        hint: str | None = None,
    ):
        self.series = series
        self.reason = reason
        self.path = path
        where = f" [{path}]" if path else ""
        super().__init__(f"series {series}: {message}{where}", hint=hint)
        self.detail = message

    def __reduce__(self):
        # Rebuilt from its own arguments when it crosses a process boundary (a process pool
        # returning a failed series); the default would call ``cls(message)`` and fail.
        return _rebuild, (type(self), self.series, self.reason, self.detail, self.path, self.hint)


def _rebuild(cls, series, reason, message, path, hint):
    return cls(series, reason, message, path=path, hint=hint)


class InvalidSeriesError(SeriesError):
    """The DICOM series is unusable as a CT volume (corrupt, incomplete, wrong kind)."""


class SegmentationError(SeriesError):
    """The segmenter found no usable spine in an otherwise valid volume."""


class TransientError(SpineIdcError):
    """A network or server fault that may pass: the download is retried with backoff."""


class NetworkUnreachable(SpineIdcError):
    """An endpoint that the run needs cannot be reached at all; nothing is tried per series."""


class MachineFault(SpineIdcError):
    """A fault of the machine met while working on a series: nothing is recorded, the job fails.

    Raised from the original error (``__cause__``), so the job log keeps its traceback.
    """


#: ``errno`` values that say something about the machine (disk, quota, file handles, memory),
#: not about the series being worked on.  EFBIG: a file-size limit (``ulimit -f``) or a
#: filesystem's largest file.
MACHINE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EMFILE,
                            errno.ENFILE, errno.ENOMEM, errno.EFBIG})


def machine_fault(exc: BaseException) -> BaseException | None:
    """The fault of the machine behind ``exc`` (itself, or what it was raised from or while
    handling), or ``None`` if ``exc`` says nothing about the machine.

    A :class:`SeriesError` raised because a file could not be read (``EIO``) or written
    (``ENOSPC``) is a machine fault too: the series' data are not to blame.  This is the one
    place that tells the two apart; every stage that records per-series failures asks it first.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (MachineFault, MemoryError)):
            return exc
        if isinstance(exc, OSError) and exc.errno in MACHINE_ERRNOS:
            return exc
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return None


def raise_if_machine_fault(exc: BaseException, series: str, stage: str) -> None:
    """Raise :class:`MachineFault` (from ``exc``) if ``exc`` is a fault of the machine.

    Called where a stage would record ``exc`` against the series: the job must fail instead,
    leave nothing behind for the series, and let the next run redo it.
    """
    fault = machine_fault(exc)
    if fault is None:
        return
    if isinstance(fault, MachineFault):
        raise fault
    what = "out of memory" if isinstance(fault, MemoryError) else f"{type(fault).__name__}: {fault}"
    raise MachineFault(
        f"{stage} of series {series} stopped by a fault of this machine, not of the series ({what}); "
        "nothing was recorded for the series",
        hint="free disk space, quota, file handles or memory (or fix the folder), then run again: "
             "the series is redone") from exc
