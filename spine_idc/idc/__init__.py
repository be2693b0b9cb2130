"""Selecting series from the NCI Imaging Data Commons.

:mod:`spine_idc.idc.query` turns the config's ``query`` section into a cohort (one record per CT
series, ready to become manifest rows) from idc-index's bundled series table with DuckDB, or from
IDC's BigQuery tables; :mod:`spine_idc.idc.indices` finds the optional idc-index tables some
filters need.
"""
