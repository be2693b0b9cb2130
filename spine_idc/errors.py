"""The package's error hierarchy.

Every error carries enough context for a person reading a log or ``failures.csv`` to know which
series failed, why, and what to do about it.  Bad input is a :class:`SeriesError`: the workflow
records it for that series and goes on with the others.  Anything else is a bug or a broken
installation and is allowed to stop the job.
"""

from __future__ import annotations


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
    """A shard's pack (spine_idc.packs) is unreadable or holds what packs never hold."""


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


class InvalidSeriesError(SeriesError):
    """The DICOM series is unusable as a CT volume (corrupt, incomplete, wrong kind)."""


class SegmentationError(SeriesError):
    """The segmenter found no usable spine in an otherwise valid volume."""


class TransientError(SpineIdcError):
    """A network or server fault that may pass: the download is retried with backoff."""


class NetworkUnreachable(SpineIdcError):
    """An endpoint that the run needs cannot be reached at all; nothing is tried per series."""
