"""spine_idc.sources: the registry is the one list of sources; each keeps the protocol."""

import pytest

from spine_idc import layout
from spine_idc.config import load_schema
from spine_idc.errors import ConfigError
from spine_idc.manifest import ManifestRow
from spine_idc.sources import SOURCES, Source, get_source, is_remote


def test_every_registered_source_keeps_the_protocol_under_its_own_name():
    for name, source in SOURCES.items():
        assert isinstance(source, Source), name
        assert source.name == name


def test_the_schemas_name_exactly_the_registered_sources():
    """Adding a source means naming it in the two schemas' enums; this says when one is missed."""
    assert set(load_schema("config")["properties"]["source"]["enum"]) == set(SOURCES)
    assert set(load_schema("manifest")["properties"]["source"]["enum"]) == set(SOURCES)


def test_remote_sources_are_the_ones_downloaded():
    assert {name for name in SOURCES if is_remote(name)} == {"idc", "dicomweb"}


def test_the_folder_each_source_scans():
    config = {"input_dir": "data/ct"}
    assert get_source("local").input_folder(config) == "data/ct"
    assert get_source("phantom").input_folder(config) == layout.PATTERNS["phantoms"]
    assert get_source("idc").input_folder(config) is None
    assert get_source("dicomweb").input_folder(config) is None


def test_an_unknown_source_is_a_config_error_naming_the_known_ones():
    with pytest.raises(ConfigError, match="unknown source 'pacs'") as info:
        get_source("pacs")
    assert "dicomweb" in info.value.hint


def test_a_local_series_is_not_fetched(tmp_path):
    row = ManifestRow(series_key="1.2.3", series_instance_uid="1.2.3", study_instance_uid="1.2",
                      patient_id="P", modality="CT", series_description="", n_instances=1,
                      source="local")
    with pytest.raises(ValueError, match="is not downloaded"):
        get_source("local").fetch(row, tmp_path, None, 10.0)
