"""The classical (weights-free, CPU) vertebra segmenter: :class:`ClassicalBackend`.

Its steps, each in its own module with its reasoning at the top: :mod:`.grid` (shared with
the networks) puts the CT on a working grid, :mod:`.canal` finds the spinal canal,
:mod:`.axis` follows it, :mod:`.bone` and :mod:`.column` outline the bodies in front of it,
:mod:`.discs` and :mod:`.vertebrae` split the column, :mod:`.grow` grows whole vertebrae,
:mod:`.softparts` adds discs and canal, :mod:`.ribs` and :mod:`.sacrum` find the anchors
that :mod:`.naming` names from, and :mod:`.levels` assembles the result.  The state passed
between them is :class:`.work.Work`; :mod:`.backend` runs them in order.
"""

from .backend import VERSION, ClassicalBackend

__all__ = ["VERSION", "ClassicalBackend"]
