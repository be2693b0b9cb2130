"""spine-idc: labelled spine data from the NCI Imaging Data Commons.

The package is a functional core (conversion, segmentation, measurement, DICOM SEG/SR) behind a
command line, ``spine-idc``, that the Snakemake workflow in ``workflow/`` calls one verb per rule.
Importing it is cheap; heavy dependencies are imported by the modules that use them.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
