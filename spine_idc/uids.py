"""DICOM UID syntax, and the series keys made from UIDs that become folder names.

On the ground floor because every layer checks UIDs: the folder scan and the sources (which
series a record names), conversion and publishing (what a header or a server says), and the
layout (a key that becomes a path component must not be ``../..``).
"""

from __future__ import annotations

import re

# One UID component: "0" or a number without a leading zero (PS3.5 section 9.1).
_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_NOUID_RE = re.compile(r"^nouid-[0-9a-f]{12}$")


def is_valid_uid(uid: str) -> bool:
    """Whether ``uid`` has DICOM UID syntax.

    At most 64 characters, digits and dots only, no empty component and no component with a
    leading zero (``0`` itself is allowed).

    Parameters
    ----------
    uid:
        The text to check; surrounding whitespace is not stripped (a padded UID read with
        pydicom is already stripped, so padding here means the value is malformed).

    Returns
    -------
    bool
    """
    return isinstance(uid, str) and 0 < len(uid) <= 64 and _UID_RE.fullmatch(uid) is not None


def safe_series_key(text: str) -> str:
    """Validate a series key before it becomes a path component.

    Series keys come from the data (a SeriesInstanceUID), so a crafted file could otherwise
    name a folder ``../../etc``.  Only a valid UID or ``nouid-<12 lowercase hex>`` passes.

    Parameters
    ----------
    text:
        The candidate key.

    Returns
    -------
    str
        ``text`` unchanged.

    Raises
    ------
    ValueError
        If ``text`` is neither a valid UID nor a ``nouid-`` key.
    """
    if isinstance(text, str) and (is_valid_uid(text) or _NOUID_RE.fullmatch(text)):
        return text
    raise ValueError(
        f"unsafe series key {text!r}: expected a DICOM UID or 'nouid-' and 12 hex digits"
    )
