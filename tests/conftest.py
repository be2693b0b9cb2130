"""Test-wide settings: tests marked ``network`` talk to services outside this machine (IDC's
buckets, BigQuery) and run only when ``SPINE_IDC_NETWORK_TESTS=1``."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config, items):
    if os.environ.get("SPINE_IDC_NETWORK_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="needs the internet; set SPINE_IDC_NETWORK_TESTS=1 to run")
    for item in items:
        if "network" in item.keywords:
            item.add_marker(skip)
