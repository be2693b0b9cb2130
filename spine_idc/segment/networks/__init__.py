"""Trained networks as segmentation backends: :mod:`.model` (a model folder or MONAI bundle,
its network, preprocessing and the way back to the CT), :mod:`.labelmap` (a network's label
map cleaned into vertebrae, with its QC record), :mod:`.monai` (our MONAI models and bundles)
and :mod:`.totalseg` (TotalSegmentator).  Each backend is loaded by name through
:func:`spine_idc.segment.get_backend`; torch and MONAI are imported only when one runs.
"""
