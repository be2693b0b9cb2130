"""Packs: how a shard's per-series outputs travel between jobs that share no filesystem.

On a shared filesystem (a workstation, Slurm) a shard job writes its series' outputs in their
places (``work/<stage>/<key>``, ``results/series/<key>/``) and the next job finds them there.
Google Batch and Kubernetes jobs start in an empty folder and keep only what the workflow
declares; files move through the default storage (a GCS bucket).  Declaring every per-series
file would put hundreds of thousands of outputs into the plan, so each shard job there also
writes one pack, ``work/packs/<stage>/<shard>.tar``: the outputs it wrote for its series, under
their usual relative paths.  A later job unpacks the packs it needs into its own folder before
it starts, so the stages themselves do not change.

What a pack holds (:func:`members`): the stage's per-series folder or record, and its stamp (the
next stage's stamps are computed from it), and the shard's marker (``work/done/...``): the pack
is then the job's only declared output, because Snakemake asks the bucket about every declared
file, one request at a time, when it plans.  The ``finish`` pack holds the SEG and SR, and also
carries the two small files later readers need from earlier stages: the segment stage's failure
record (the cohort table) and the converted series' ``series.json`` (publish: the source's UIDs
and files), so that neither has to fetch the volumes.

A pack starts with an index (:data:`INDEX`: its stage and series).  Unpacking first removes
what that stage holds for those series under the target folder, then writes the pack's files:
the folder then has exactly the pack's outputs for them, as a shared filesystem would after the
job (an older ``failure.json`` cannot outlive a later success in the cohort's folder, which
persists from one run to the next).

Unpacking accepts regular files and folders below ``work/`` and ``results/`` only: a pack is
written by this module, and anything else in it (an absolute path, ``..``, a link, a device) is
refused, so a tampered bucket cannot write outside the job's folder.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import tarfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from .. import layout
from ..atomic import atomic_path
from ..errors import PackError
from .shards import stamp_path

log = logging.getLogger(__name__)

STAGES = ("download", "convert", "segment", "finish", "publish")
ROOTS = ("work", "results")  # the only top-level folders a pack may write into
INDEX = "work/.pack.json"  # first member: {"stage": ..., "keys": [...]}; not unpacked


def members(stage: str, key: str) -> list[Path]:
    """The relative paths (files or folders) that ``stage`` writes for series ``key``."""
    if stage in ("download", "convert", "segment"):
        return [layout.path(stage, key), stamp_path(stage, key)]
    if stage == "finish":  # with what publish and the cohort read of earlier stages
        return [layout.path("measure", key), layout.path("finish", key),
                layout.path("seg", key).parent, stamp_path("finish", key),
                layout.path("segment", key) / layout.FAILURE,
                layout.path("convert", key) / layout.SERIES_INFO]
    if stage == "publish":
        return [layout.path("publish", key)]
    raise ValueError(f"no pack for stage {stage!r}; stages: {', '.join(STAGES)}")


def write_pack(stage: str, keys: Iterable[str], out: str | Path, root: str | Path = ".",
               extra: Iterable[str | Path] = ()) -> int:
    """Write what ``stage`` left for ``keys`` under ``root`` into the tar ``out`` (atomically).

    ``extra``: more files to carry, relative to ``root`` (the shard's marker).  Series without
    outputs at this stage (failed earlier) are simply absent.  Returns the number of files
    packed.  The tar is not compressed: volumes and label maps are gzipped already and DICOM
    barely compresses.
    """
    root = Path(root)
    count = 0
    keys = list(keys)
    rels = [rel for key in keys for rel in members(stage, key)]
    for rel in map(Path, extra):
        if rel.is_absolute() or not rel.parts or rel.parts[0] not in ROOTS:
            raise ValueError(f"{rel}: a pack carries files below {' and '.join(ROOTS)}/ only")
        rels.append(rel)
    with atomic_path(out, suffix=".tar") as tmp:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            index = json.dumps({"stage": stage, "keys": keys}).encode()
            info = tarfile.TarInfo(INDEX)
            info.size = len(index)
            tar.addfile(info, io.BytesIO(index))
            for rel in rels:
                for path in _files_under(root / rel):
                    tar.add(path, arcname=path.relative_to(root).as_posix(), recursive=False)
                    count += 1
    log.info("packed %d files of %s into %s", count, stage, out)
    return count


def _files_under(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():  # temporary siblings of an interrupted write are not results
        return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".tmp-"))
    return []


def read_pack(pack: str | Path, root: str | Path = ".") -> int:
    """Unpack ``pack`` under ``root``; return the number of files.

    Each file is written atomically, so an interrupted unpack leaves whole files only (and a
    re-run unpacks again).  Raises :class:`PackError` for a pack that is not one of ours.
    """
    root = Path(root)
    count = 0
    try:
        with tarfile.open(pack, "r:") as tar:
            for member in tar:
                name = _checked_name(member, pack)
                if name == INDEX:
                    _clear(json.loads(tar.extractfile(member).read()), root, pack)
                    continue
                if member.isdir():
                    (root / name).mkdir(parents=True, exist_ok=True)
                    continue
                source = tar.extractfile(member)
                with atomic_path(root / name) as tmp, open(tmp, "wb") as sink:
                    while chunk := source.read(1 << 20):
                        sink.write(chunk)
                os.utime(root / name, (member.mtime, member.mtime))
                count += 1
    except tarfile.TarError as err:
        raise PackError(f"{pack} is not a readable pack: {err}",
                        hint="delete it so that the job that writes it runs again") from err
    log.info("unpacked %d files from %s", count, pack)
    return count


def _clear(index: dict, root: Path, pack) -> None:
    """Remove what the pack's stage holds for its series under ``root`` (see the module doc)."""
    try:
        stage, keys = index["stage"], list(index["keys"])
        targets = [root / rel for key in keys for rel in members(stage, key)]
    except (KeyError, TypeError, ValueError) as err:  # ValueError: a key that is not a safe name
        raise PackError(f"{pack}: its index is not one of ours ({err})",
                        hint="packs are written by spine-idc; delete it so that its job runs again") from err
    for path in targets:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _checked_name(member: tarfile.TarInfo, pack) -> str:
    path = PurePosixPath(member.name)
    if not (member.isfile() or member.isdir()):
        raise PackError(f"{pack}: {member.name!r} is not a regular file or folder",
                        hint="packs hold files only; was it written by spine-idc?")
    if path.is_absolute() or ".." in path.parts or not path.parts or path.parts[0] not in ROOTS:
        raise PackError(f"{pack}: {member.name!r} is outside {' and '.join(ROOTS)}/",
                        hint="packs hold files only; was it written by spine-idc?")
    return path.as_posix()


def unpack_shards(packs_dir: str | Path, stages: Iterable[str], shard_ids: Iterable[str],
                  root: str | Path = ".") -> int:
    """Unpack ``<packs_dir>/<stage>/<shard>.tar`` for every stage and shard, in that order."""
    count = 0
    for shard in shard_ids:
        for stage in stages:
            count += read_pack(Path(packs_dir) / stage / f"{shard}.tar", root)
    return count
