"""Vertebra segmentation: one small interface (:mod:`.base`), several backends found by name.

``get_backend("classical", spacing_mm=1.0).segment(ct, series_key=...)`` returns a
:class:`SegmentationResult` (whole-vertebra labels, vertebral-body labels, QC record).

A backend is one module whose class implements :class:`Backend` (or :class:`StagedBackend`) and
carries a :class:`Declaration` (its options, resources and version), plus one line in
:data:`REGISTRY` below.  The registry names the class as ``"module:Class"`` and imports the
module only when that backend is asked for, so that importing this package stays cheap and the
GPU backends do not pull in torch until one runs.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

from ..errors import ConfigError
from .base import (
    Anchor,
    Backend,
    Declaration,
    QCRecord,
    Resources,
    SegmentationResult,
    StagedBackend,
    VertebraQC,
)

#: ``segment.backend`` value -> ``"module:Class"`` of the backend (imported on request).
REGISTRY: dict[str, str] = {
    "classical": "spine_idc.segment.classical:ClassicalBackend",
    "monai": "spine_idc.segment.networks.monai:MonaiBackend",
    "totalsegmentator": "spine_idc.segment.networks.totalseg:TotalSegmentatorBackend",
}


def available_backends() -> list[str]:
    """Names :func:`get_backend` accepts."""
    return sorted(REGISTRY)


def backend_class(name: str) -> type:
    """The class registered as ``name``; imports its module.

    Raises
    ------
    ConfigError
        If ``name`` is not a registered backend (the message lists the choices).
    """
    if name not in REGISTRY:
        raise ConfigError(
            f"unknown segmentation backend {name!r}; choose one of: "
            + ", ".join(available_backends())
        )
    module_name, attr = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module_name), attr)


def declaration(name: str) -> Declaration:
    """What the backend called ``name`` declares (imports its module, builds nothing)."""
    return backend_class(name).declaration


def make_options(name: str, **options: Any) -> Any:
    """The options dataclass of backend ``name`` from keyword values (the others default).

    Raises
    ------
    ConfigError
        Naming the first key the backend does not take, and the ones it does.
    """
    cls = declaration(name).options
    takes = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(options) - set(takes))
    if unknown:
        raise ConfigError(
            f"segmentation backend {name!r} does not take option(s) {', '.join(unknown)}; "
            f"it takes: {', '.join(takes) or 'none'}"
        )
    return cls(**options)


def build(name: str, options: Any) -> Backend:
    """The backend ``name`` built from its options dataclass (this may load a model)."""
    return backend_class(name)(**dataclasses.asdict(options))


def get_backend(name: str, **options: Any) -> Backend:
    """Build the backend called ``name`` with its keyword ``options``.

    Raises
    ------
    ConfigError
        If ``name`` is not a known backend (the message lists the choices) or an option is not
        one the backend takes.
    """
    return build(name, make_options(name, **options))


__all__ = [
    "Anchor",
    "Backend",
    "Declaration",
    "QCRecord",
    "REGISTRY",
    "Resources",
    "SegmentationResult",
    "StagedBackend",
    "VertebraQC",
    "available_backends",
    "backend_class",
    "build",
    "declaration",
    "get_backend",
    "make_options",
]
