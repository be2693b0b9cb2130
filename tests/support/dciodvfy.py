"""Run dciodvfy (Debian dicom3tools) on a DICOM file and collect its findings.

Tests call :func:`dciodvfy_errors` and assert the list is empty; they skip when the binary is
missing (``.ci/run`` installs ``dicom3tools``).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

DCIODVFY = shutil.which("dciodvfy")


def dciodvfy_report(path: str | Path) -> tuple[list[str], list[str]]:
    """Validate ``path`` against its IOD; return ``(error_lines, warning_lines)``.

    dciodvfy prints one finding per line, prefixed ``Error -`` or ``Warning -``; its exit
    status does not tell whether errors were found, so the lines are what counts.
    """
    if DCIODVFY is None:
        pytest.skip("dciodvfy (dicom3tools) is not installed")
    proc = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=300)
    lines = (proc.stdout + "\n" + proc.stderr).splitlines()
    errors = [ln for ln in lines if ln.startswith("Error")]
    warnings = [ln for ln in lines if ln.startswith("Warning")]
    return errors, warnings


def dciodvfy_errors(path: str | Path) -> list[str]:
    """The ``Error`` lines dciodvfy reports for ``path`` (empty when the object is valid)."""
    return dciodvfy_report(path)[0]
