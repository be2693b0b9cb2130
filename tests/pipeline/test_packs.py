"""Shard packs (spine_idc.pipeline.packs): what a stage's pack holds, the round trip, and refusing packs
that would write outside the job's folder."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from spine_idc import layout
from spine_idc.errors import PackError
from spine_idc.pipeline import packs
from spine_idc.pipeline.shards import stamp_path

KEYS = ("1.2.3.4", "1.2.3.5")


def _write(root: Path, rel: Path, text: str) -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text(text)


def _files(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def test_round_trip_of_a_stage(tmp_path):
    src, dst = tmp_path / "job1", tmp_path / "job2"
    for key in KEYS:
        _write(src, layout.path("convert", key) / layout.VOLUME, f"volume {key}")
        _write(src, layout.path("convert", key) / layout.SERIES_INFO, f"info {key}")
        _write(src, stamp_path("convert", key), "abc\n")
    _write(src, layout.path("convert", KEYS[0]) / ".tmp-volume.nii.gz-x", "half-written")
    _write(src, layout.path("segment", KEYS[0]) / layout.LABELS, "another stage's")

    n = packs.write_pack("convert", [*KEYS, "1.2.3.6"], tmp_path / "p.tar", root=src)  # .6: no outputs
    assert n == 6
    assert packs.read_pack(tmp_path / "p.tar", root=dst) == 6
    expected = {k: v for k, v in _files(src).items() if ".tmp-" not in k and "/segment/" not in k}
    assert _files(dst) == expected


def test_finish_pack_carries_the_products_and_only_the_small_upstream_files(tmp_path):
    src, dst = tmp_path / "job", tmp_path / "cohort"
    good, bad = KEYS
    _write(src, layout.path("measure", good), "{}")
    _write(src, layout.path("finish", good), "{}")
    _write(src, layout.path("seg", good), "SEG")
    _write(src, layout.path("sr", good), "SR")
    _write(src, stamp_path("finish", good), "s\n")
    _write(src, layout.path("segment", good) / layout.LABELS, "labels stay behind")
    _write(src, layout.path("segment", bad) / layout.FAILURE, '{"reason": "no-spine"}')
    _write(src, layout.path("convert", good) / layout.SERIES_INFO, "{}")
    _write(src, layout.path("convert", good) / layout.VOLUME, "the volume stays behind")

    packs.write_pack("finish", KEYS, tmp_path / "finish.tar", root=src)
    packs.read_pack(tmp_path / "finish.tar", root=dst)
    assert set(_files(dst)) == {
        f"work/measure/{good}.json", f"work/finish/{good}.json", f"results/series/{good}/seg.dcm",
        f"results/series/{good}/sr.dcm", f"work/stamps/finish/{good}", f"work/segment/{bad}/failure.json",
        f"work/convert/{good}/series.json"}


def _tar_with(path: Path, member: tarfile.TarInfo, data: bytes = b"x") -> Path:
    with tarfile.open(path, "w") as tar:
        member.size = len(data) if member.isfile() else 0
        tar.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return path


@pytest.mark.parametrize("name", ["/etc/evil", "work/../../evil", "evil.txt", "spine_idc/x.py"])
def test_a_member_outside_work_and_results_is_refused(tmp_path, name):
    pack = _tar_with(tmp_path / "bad.tar", tarfile.TarInfo(name))
    root = tmp_path / "job"
    root.mkdir()
    with pytest.raises(PackError, match="outside"):
        packs.read_pack(pack, root=root)
    assert not any(root.rglob("*")) and not (tmp_path / "evil").exists()


def test_a_link_is_refused(tmp_path):
    link = tarfile.TarInfo("work/convert/k/volume.nii.gz")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    pack = _tar_with(tmp_path / "bad.tar", link)
    with pytest.raises(PackError, match="not a regular file"):
        packs.read_pack(pack, root=tmp_path / "job")


def test_a_damaged_pack_says_so(tmp_path):
    src = tmp_path / "job"
    _write(src, layout.path("convert", KEYS[0]) / layout.VOLUME, "v" * 5000)
    packs.write_pack("convert", KEYS, tmp_path / "p.tar", root=src)
    with tarfile.open(tmp_path / "p.tar") as tar:
        volume = next(m for m in tar if m.name.endswith("volume.nii.gz"))
    data = (tmp_path / "p.tar").read_bytes()
    (tmp_path / "p.tar").write_bytes(data[:volume.offset_data + 100])  # cut inside the file's data
    with pytest.raises(PackError, match="not a readable pack"):
        packs.read_pack(tmp_path / "p.tar", root=tmp_path / "out")
    assert not list((tmp_path / "out").rglob("volume.nii.gz"))  # no truncated file left behind


def test_unpack_shards_reads_each_stage_of_each_shard(tmp_path):
    src, dst = tmp_path / "job", tmp_path / "main"
    _write(src, layout.path("finish", KEYS[0]), "{}")
    _write(src, layout.path("publish", KEYS[1]), "{}")
    packs.write_pack("finish", KEYS[:1], tmp_path / "packs" / "finish" / "s00000.tar", root=src)
    packs.write_pack("publish", KEYS[1:], tmp_path / "packs" / "publish" / "s00000.tar", root=src)
    assert packs.unpack_shards(tmp_path / "packs", ["finish", "publish"], ["s00000"], root=dst) == 2
    assert set(_files(dst)) == {f"work/finish/{KEYS[0]}.json", f"work/publish/{KEYS[1]}.json"}


def test_the_marker_travels_in_the_pack_and_nothing_outside_work_and_results(tmp_path):
    src, dst = tmp_path / "job", tmp_path / "next"
    _write(src, Path("work/done/convert/s00000.json"), "{}")
    packs.write_pack("convert", KEYS, tmp_path / "p.tar", root=src, extra=["work/done/convert/s00000.json"])
    packs.read_pack(tmp_path / "p.tar", root=dst)
    assert set(_files(dst)) == {"work/done/convert/s00000.json"}
    with pytest.raises(ValueError, match="below work and results"):
        packs.write_pack("convert", KEYS, tmp_path / "q.tar", root=src, extra=["config.yaml"])


def test_unpacking_replaces_what_the_stage_held_for_those_series(tmp_path):
    """The cohort's folder persists between runs: a series that failed before and succeeds now
    must not keep its old failure record (which would still list it as failed)."""
    src, main = tmp_path / "job", tmp_path / "main"
    good, other = KEYS
    _write(main, layout.path("segment", good) / layout.FAILURE, '{"reason": "download-failed"}')
    _write(main, layout.path("seg", good), "old SEG")
    _write(main, layout.path("segment", other) / layout.FAILURE, "another shard's series")
    _write(src, layout.path("finish", good), "{}")
    _write(src, layout.path("seg", good), "new SEG")
    packs.write_pack("finish", [good], tmp_path / "finish.tar", root=src)
    packs.read_pack(tmp_path / "finish.tar", root=main)
    assert not (main / layout.path("segment", good) / layout.FAILURE).exists()
    assert (main / layout.path("seg", good)).read_text() == "new SEG"
    assert (main / layout.path("segment", other) / layout.FAILURE).exists()  # not in this pack


def test_an_index_naming_unsafe_series_is_refused(tmp_path):
    index = json.dumps({"stage": "finish", "keys": ["../../etc"]}).encode()
    member = tarfile.TarInfo(packs.INDEX)
    member.size = len(index)
    with tarfile.open(tmp_path / "bad.tar", "w") as tar:
        tar.addfile(member, io.BytesIO(index))
    with pytest.raises(PackError, match="index is not one of ours"):
        packs.read_pack(tmp_path / "bad.tar", root=tmp_path / "job")
