"""Deterministic synthetic spine CT phantoms with ground-truth vertebra labels.

A phantom is built in patient coordinates (DICOM LPS, mm) from a seed: a curved spine (sagittal
lordosis/kyphosis, optional mild scoliosis) of analytic vertebrae (body, pedicles, lamina,
spinous and transverse processes, articular processes), discs, spinal canal with cord or dural
sac, a tilted wedge-shaped sacrum, ribs, sternum, iliac wings, aorta, lungs, fat and soft tissue.
Every bony part is a signed distance function (SDF), so partial volume at surfaces, a cortical
shell of known thickness and real gaps at joints all follow from one number per voxel.

The anatomy is rasterised on a canonical axis-aligned grid (``[z, y, x]`` in memory, LPS axes
ascending) and the patient position is realised as flips of that raster, so that
:attr:`Phantom.ct` is exactly the grid a correct converter rebuilds from the DICOM series that
:func:`write_dicom_series` writes.  Label values come from :mod:`spine_idc.coding`.

The rooms: :mod:`.spec` (what a phantom is), :mod:`.anatomy` (the spine and its parts as
signed distance functions), :mod:`.raster` (tissues, blur, noise: the CT), :mod:`.scenarios`
(specs from seeds, the hard scenarios), :mod:`.dicom` (the series and ground truth as
files) and :mod:`.verse` (a CT painted into a manual VerSe mask: real shapes, manual truth).  A development aid: the pipeline imports it only for the ``phantom`` source.
"""

from .dicom import phantom_uids, write_dicom_series, write_phantom
from .raster import make_phantom
from .scenarios import HARD_SCENARIOS, hard_spec, spec_for_seed
from .spec import FEATURES, NAMES, ORIENTATIONS, Phantom, PhantomSpec, Tissue, true_name

__all__ = [
    "FEATURES", "HARD_SCENARIOS", "NAMES", "ORIENTATIONS", "Phantom", "PhantomSpec", "Tissue",
    "hard_spec", "make_phantom", "phantom_uids", "spec_for_seed", "true_name",
    "write_dicom_series", "write_phantom",
]
