"""The manifest is validated on write and read, and series keys are safe folder names."""

import pytest

from spine_idc.errors import ManifestError
from spine_idc.manifest import ManifestRow, read_manifest, write_manifest


def row(key="1.2.3.4", **kw):
    base = dict(series_key=key, series_instance_uid=key, study_instance_uid="1.2.3",
                patient_id="P1", modality="CT", series_description="spine", n_instances=40,
                source="local", file_list="work/manifest/x.files")
    base.update(kw)
    return ManifestRow(**base)


def test_round_trip_is_sorted_and_stable(tmp_path):
    rows = [row("1.2.3.9"), row("1.2.3.10"), row("nouid-0123456789ab", series_instance_uid="")]
    write_manifest(rows, tmp_path / "m.tsv")
    first = (tmp_path / "m.tsv").read_text()
    back = read_manifest(tmp_path / "m.tsv")
    assert [r.series_key for r in back] == sorted(r.series_key for r in rows)
    assert back[0] == sorted(rows, key=lambda r: r.series_key)[0]
    write_manifest(list(reversed(rows)), tmp_path / "m.tsv")
    assert (tmp_path / "m.tsv").read_text() == first


@pytest.mark.parametrize("key", ["../etc", "1.2/3", "", "nouid-xyz", "a" * 70, "1.2.3 "])
def test_unsafe_keys_are_rejected(tmp_path, key):
    with pytest.raises(ManifestError, match="series_key"):
        write_manifest([row(key)], tmp_path / "m.tsv")


def test_duplicate_keys_are_rejected(tmp_path):
    with pytest.raises(ManifestError, match="twice"):
        write_manifest([row(), row()], tmp_path / "m.tsv")


def test_unknown_source_and_bad_count(tmp_path):
    with pytest.raises(ManifestError):
        write_manifest([row(source="ftp")], tmp_path / "m.tsv")
    with pytest.raises(ManifestError):
        write_manifest([row(n_instances=0)], tmp_path / "m.tsv")


def test_tampered_file_fails_on_read(tmp_path):
    write_manifest([row()], tmp_path / "m.tsv")
    text = (tmp_path / "m.tsv").read_text().replace("1.2.3.4\t", "../../x\t", 1)
    (tmp_path / "m.tsv").write_text(text)
    with pytest.raises(ManifestError):
        read_manifest(tmp_path / "m.tsv")


def test_missing_manifest(tmp_path):
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(tmp_path / "absent.tsv")


def test_a_malformed_query_record_is_skipped_with_a_warning(caplog):
    """One bad record of a search (IDC or QIDO-RS) used to stop the whole cohort."""
    import dataclasses
    import logging

    from spine_idc.manifest import rows_from_records

    def record(key, **kw):
        rec = {k: v for k, v in dataclasses.asdict(row(key)).items() if k not in ("source", "file_list")}
        rec.update(location=f"s3://idc-open-data/{key}/", **kw)
        return rec

    records = [record("1.2.3.1"), record("../../x"), record("1.2.3.3", n_instances="many"),
               {k: v for k, v in record("1.2.3.4").items() if k != "patient_id"}, record("1.2.3.5")]
    caplog.set_level(logging.WARNING)
    rows = rows_from_records(records, "idc")
    assert [r.series_key for r in rows] == ["1.2.3.1", "1.2.3.5"]
    warned = [r.getMessage() for r in caplog.records]
    for key, why in (("../../x", "series_key"), ("1.2.3.3", "many"), ("1.2.3.4", "patient_id")):
        said = [w for w in warned if repr(key) in w]
        assert len(said) == 1 and why in said[0], warned
