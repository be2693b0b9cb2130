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
