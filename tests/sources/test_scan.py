"""spine_idc.sources.scan and spine_idc.uids: series discovery in messy folders, UID syntax, and
safe series keys."""

from __future__ import annotations

import hashlib
import os
import shutil

import pydicom
import pytest
from support.dicom_faults import TS_DICOM, edit, write_ct_series

from spine_idc.sources.scan import FoundSeries, scan_folder
from spine_idc.uids import is_valid_uid, safe_series_key


def nouid_key(folder: str, series="", study="", frame="", rows=24, cols=20) -> str:
    text = "\x1f".join([folder, series, study, frame, f"{rows}x{cols}"])
    return "nouid-" + hashlib.sha1(text.encode()).hexdigest()[:12]


@pytest.fixture
def messy(tmp_path):
    """Two series interleaved in one folder, one spread over subfolders, a blank-UID series,
    and files that are not DICOM (text, junk after a DICM preamble, a DICOMDIR)."""
    root = tmp_path / "in"
    a = write_ct_series(root / "mixed", seed=1, series_uid="1.2.3.1")
    b = write_ct_series(root / "mixed", seed=2, series_uid="1.2.3.2", n_slices=5)
    c = write_ct_series(root / "c", seed=3, series_uid="1.2.3.3", n_slices=6)
    for i, f in enumerate(c[3:]):  # one series scattered over nested folders
        (root / "c" / "deep" / str(i)).mkdir(parents=True)
        f.rename(root / "c" / "deep" / str(i) / f.name)
    blank = write_ct_series(root / "noid", seed=4, n_slices=4)
    for f in blank:
        edit(f, SeriesInstanceUID="", StudyInstanceUID="", FrameOfReferenceUID="")
    (root / "mixed" / "README.txt").write_text("not DICOM\n")
    (root / "mixed" / "junk.dcm").write_bytes(b"\0" * 128 + b"DICM" + os.urandom(300))
    (root / "empty").mkdir()
    ddir = pydicom.dcmread(a[0])
    ddir.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    del ddir.SOPClassUID
    ddir.save_as(root / "DICOMDIR")
    return root, {"a": a, "b": b, "blank": blank}


def test_scan_groups_a_messy_folder(messy):
    root, made = messy
    found = scan_folder(root)
    assert all(isinstance(s, FoundSeries) for s in found)
    keys = [s.key for s in found]
    blank_key = nouid_key("noid")
    assert keys == sorted(["1.2.3.1", "1.2.3.2", "1.2.3.3", blank_key])
    by_key = {s.key: s for s in found}
    assert by_key["1.2.3.1"].n_files == 12 and by_key["1.2.3.2"].n_files == 5
    assert by_key["1.2.3.3"].n_files == 6  # collected from three folders
    assert set(by_key["1.2.3.1"].files) == {str(f) for f in made["a"]}
    blank = by_key[blank_key]
    assert blank.series_instance_uid == "" and blank.n_files == 4
    assert set(blank.files) == {str(f) for f in made["blank"]}
    for s in found:
        assert list(s.files) == sorted(s.files) and all(os.path.isabs(f) for f in s.files)
        assert s.modality == "CT" and s.sop_class_uid == pydicom.uid.CTImageStorage
        assert s.patient_id == "FAULTS-001" and s.n_files == len(s.files)


def test_scan_is_deterministic_and_location_independent(messy, tmp_path):
    root, _ = messy
    first = scan_folder(root)
    assert scan_folder(root) == first
    moved = shutil.copytree(root, tmp_path / "elsewhere" / "copy")
    again = scan_folder(moved)
    assert [s.key for s in again] == [s.key for s in first]
    assert [len(s.files) for s in again] == [len(s.files) for s in first]


def test_blank_uid_series_in_one_folder_are_kept_apart(tmp_path):
    small = write_ct_series(tmp_path, seed=5, n_slices=3, rows=16, cols=16)
    large = write_ct_series(tmp_path, seed=6, n_slices=4)
    for f in small + large:
        edit(f, SeriesInstanceUID="")
    found = scan_folder(tmp_path)
    assert sorted(s.n_files for s in found) == [3, 4]
    assert all(s.key.startswith("nouid-") and safe_series_key(s.key) for s in found)


def test_relative_root_gives_absolute_files(tmp_path, monkeypatch):
    write_ct_series(tmp_path / "x", n_slices=2)
    monkeypatch.chdir(tmp_path)
    (found,) = scan_folder("x")
    assert all(f.startswith(str(tmp_path)) for f in found.files)


def test_fifo_socket_and_broken_link_are_skipped_not_opened(tmp_path):
    """A FIFO in the input folder used to block the scan forever (reading it waits for a
    writer): only regular files are opened.  Run in a child process with a deadline, so a
    regression fails instead of hanging the suite."""
    import socket
    import subprocess
    import sys
    import textwrap

    write_ct_series(tmp_path / "ct", n_slices=3)
    os.mkfifo(tmp_path / "ct" / "pipe.dcm")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "ct" / "sock.dcm"))
    os.symlink(tmp_path / "nowhere", tmp_path / "ct" / "broken.dcm")
    code = textwrap.dedent(f"""
        from pathlib import Path
        from spine_idc.sources.scan import scan_folder
        found = scan_folder(Path({str(tmp_path)!r}), workers=1)
        print(len(found), len(found[0].files))
    """)
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=60)
    finally:
        sock.close()
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "3"]
    assert "pipe.dcm: not a regular file" in out.stderr


def test_a_linked_folder_is_not_entered_but_named(tmp_path, caplog):
    """A symbolic link to a folder of DICOM files is not followed (a link could loop or leave
    the input), and the scan says so instead of silently finding nothing there."""
    write_ct_series(tmp_path / "elsewhere" / "ct", n_slices=3)
    (tmp_path / "input").mkdir()
    os.symlink(tmp_path / "elsewhere" / "ct", tmp_path / "input" / "ct")
    with caplog.at_level("WARNING", logger="spine_idc.sources.scan"):
        found = scan_folder(tmp_path / "input", workers=1)
    assert found == []
    assert any("symbolic link to a folder" in r.getMessage()
               and str(tmp_path / "input" / "ct") in r.getMessage() for r in caplog.records)


def test_scan_rejects_a_file_as_root(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError):
        scan_folder(tmp_path / "f")


@pytest.mark.skipif(not TS_DICOM.is_dir(), reason=f"real data missing: {TS_DICOM}")
def test_scan_real_blank_uid_series():
    (found,) = scan_folder(TS_DICOM)
    frame = "1.3.12.2.1107.5.1.4.60064.30000022120807274275100000041"
    assert found.key == nouid_key(".", frame=frame, rows=512, cols=512)
    assert found.n_files == 20 and found.series_description == "CT Body 3.0"
    assert found.sop_class_uid == pydicom.uid.CTImageStorage  # from the file meta: blank in data


@pytest.mark.parametrize(
    "uid, ok",
    [
        ("1.2.840.10008.5.1.4.1.1.2", True),
        ("0", True),
        ("1.0.3", True),
        ("1." + "2" * 62, True),
        ("1." + "2" * 63, False),  # 65 characters
        ("", False),
        ("1.02.3", False),
        ("1..2", False),
        (".1.2", False),
        ("1.2.", False),
        ("1.2a", False),
        (" 1.2", False),
    ],
)
def test_is_valid_uid(uid, ok):
    assert is_valid_uid(uid) is ok


@pytest.mark.parametrize("bad", ["../x", "", "1.2/3", "..", "nouid-../..", "nouid-ABCDEF012345",
                                 "nouid-0123456789abc", "1.2\n", "/etc"])
def test_safe_series_key_rejects(bad):
    with pytest.raises(ValueError):
        safe_series_key(bad)


@pytest.mark.parametrize("good", ["1.2.840.113619.2.55", "nouid-0123456789ab"])
def test_safe_series_key_accepts(good):
    assert safe_series_key(good) == good


def test_process_pool_gives_the_same_answer(messy):
    root, _ = messy
    assert scan_folder(root, workers=2) == scan_folder(root, workers=1)
