"""``spine-idc``: the verbs the workflow's rules call.  Logging is configured here and nowhere else.

``manifest`` selects the cohort, ``shard <stage>`` runs one stage on every series of a shard,
``cohort`` gathers the tables, ``check-failures`` fails a run with failed series when asked;
each calls one function of :mod:`spine_idc.pipeline` (one way into each stage), and turns a
:class:`~spine_idc.errors.SpineIdcError` into a one-line message and exit status 1.  Bad input
for a series is *not* an error here: the stage records it and exits 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from . import __version__
from .errors import MachineFault, SpineIdcError

log = logging.getLogger("spine_idc")


def _options(section: str):
    def parse(text: str) -> dict:
        from .config import parse_section

        return parse_section(text, section)

    return parse


def _cmd_validate_config(args) -> int:
    from .config import Config

    cfg = Config.from_file(args.config)
    print(f"{args.config}: valid (source={cfg.source})")
    return 0


def _cmd_phantoms(args) -> int:
    from .pipeline.stages import make_phantoms

    make_phantoms(args.options.seeds, args.options.size, args.out, levels=args.options.levels)
    return 0


def _config_json(text: str):
    import json

    from .config import Config

    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise SpineIdcError(f"--config-json is not valid JSON: {e}") from e
    return Config.from_dict(raw)


def _cmd_manifest(args) -> int:
    from .pipeline.shards import write_shards
    from .pipeline.stages import make_manifest

    rows = make_manifest(args.config_json, args.out, args.file_lists, input_dir=args.input_dir)
    if args.shards is not None:
        write_shards(rows, args.shards, args.config_json.shard_size)
    return 0




def _cmd_shard(args) -> int:
    from .pipeline import packs, shards
    from .config import Stage, parse_section
    from .manifest import read_manifest

    for pack in args.unpack:  # without a shared filesystem: what earlier stages left
        packs.read_pack(pack)
    stage = Stage(args.stage)
    if stage is Stage.DOWNLOAD:
        shards.download(args.shard, _config_json(args.options).remote(), args.out, attempt=args.attempt)
    else:
        options = parse_section(args.options, stage.section)
        if stage is Stage.PUBLISH:
            shards.publish(args.shard, options, args.out, attempt=args.attempt)
        elif stage is Stage.SEGMENT:
            if args.model is not None:  # the model folder fetched from a bucket into this job
                options = options.replace(model=str(args.model))
            shards.segment(args.shard, options, args.out, threads=args.threads)
        elif stage is Stage.CONVERT:
            shards.convert(args.shard, options, args.out)
        elif stage is Stage.FINISH:
            shards.finish(args.shard, options, args.out)
        else:  # pragma: no cover - a Stage added without its job here
            raise AssertionError(f"no shard job for stage {stage}")
    if args.pack is not None:
        packs.write_pack(args.stage, [row.series_key for row in read_manifest(args.shard)], args.pack,
                         extra=[args.out])  # the marker travels in the pack
    return 0


def _cmd_cohort(args) -> int:
    from .pipeline.cohort import summary, write_cohort

    if args.packs is not None:  # no shared filesystem: gather every shard's results here first
        if args.shards is None:
            raise SpineIdcError("cohort --packs needs --shards (the shard tables' folder)")
        from .pipeline.packs import unpack_shards
        from .pipeline.shards import read_shard_ids

        unpack_shards(args.packs, args.pack_stages, read_shard_ids(args.shards), root=args.root)
    write_cohort(args.manifest, args.parquet, args.csv, args.failures, root=args.root)
    print(summary(args.manifest, args.parquet, args.csv, args.failures), flush=True)
    return 0


def _cmd_check_failures(args) -> int:
    from .pipeline.cohort import check_no_series_errors

    check_no_series_errors(args.manifest, args.failures, args.out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .config import Stage

    p = argparse.ArgumentParser(prog="spine-idc", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"spine-idc {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--console-fd", type=int, default=None, metavar="FD",
                   help="also write the one-line reason of a failure to this open file "
                        "descriptor (the rules pass the console as 3: the job's output goes "
                        "to its log)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("validate-config", help="check a config file against its schema")
    s.add_argument("config", type=Path)
    s.set_defaults(func=_cmd_validate_config)

    s = sub.add_parser("phantoms", help="generate synthetic spine CT series with ground truth")
    s.add_argument("--options", type=_options("phantom"), default=_options("phantom")("{}"))
    s.add_argument("--out", type=Path, required=True)
    s.set_defaults(func=_cmd_phantoms)

    s = sub.add_parser("manifest", help="select the cohort (IDC query, QIDO-RS search or folder scan)")
    s.add_argument("--config-json", type=_config_json, default="{}",
                   help="the run's configuration as JSON (defaults from the schema)")
    s.add_argument("--input-dir", type=Path, default=None,
                   help="folder to scan for the local and phantom sources (default: input_dir)")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--file-lists", type=Path, required=True)
    s.add_argument("--shards", type=Path, default=None, help="folder for the shard tables")
    s.set_defaults(func=_cmd_manifest)

    s = sub.add_parser("shard", help="run one stage on every series of a shard")
    s.add_argument("stage", choices=[str(stage) for stage in Stage])
    s.add_argument("--shard", type=Path, required=True, help="the shard's manifest table")
    s.add_argument("--options", default="{}",
                   help="the stage's config section as JSON (download: the source settings)")
    s.add_argument("--attempt", type=int, default=1, help="Snakemake's attempt number (1-based)")
    s.add_argument("--threads", type=int, default=None,
                   help="CPU threads the job was given (segment: torch's intra-op threads)")
    s.add_argument("--out", type=Path, required=True, help="the shard's marker (JSON)")
    s.add_argument("--model", type=Path, default=None,
                   help="segment: the model folder to use instead of segment.model (its fetched copy)")
    s.add_argument("--unpack", type=Path, action="append", default=[], metavar="PACK",
                   help="unpack an earlier stage's pack of this shard first (no shared filesystem)")
    s.add_argument("--pack", type=Path, default=None,
                   help="then pack this stage's outputs for the shard's series into this tar")
    s.set_defaults(func=_cmd_shard)







    s = sub.add_parser("cohort", help="gather measurements and failures of every series")
    s.add_argument("--manifest", type=Path, required=True)
    s.add_argument("--root", type=Path, default=Path("."))
    s.add_argument("--parquet", type=Path, required=True)
    s.add_argument("--csv", type=Path, required=True)
    s.add_argument("--failures", type=Path, required=True)
    s.add_argument("--packs", type=Path, default=None, metavar="DIR",
                   help="no shared filesystem: unpack DIR/<stage>/<shard>.tar of every shard first")
    s.add_argument("--shards", type=Path, default=None, help="the shard tables' folder (with --packs)")
    s.add_argument("--pack-stages", nargs="+", default=["finish"], choices=["finish", "publish"],
                   help="the stages whose packs hold the cohort's inputs (with --packs)")
    s.set_defaults(func=_cmd_cohort)

    s = sub.add_parser("check-failures",
                       help="fail (exit 1) when any series failed; else write --out (fail_on_series_errors)")
    s.add_argument("--manifest", type=Path, required=True)
    s.add_argument("--failures", type=Path, required=True, help="the cohort's failures.csv")
    s.add_argument("--out", type=Path, required=True, help="the marker written when none failed")
    s.set_defaults(func=_cmd_check_failures)
    return p


def _console_fd(argv: list[str] | None) -> int | None:
    """The ``--console-fd`` given, read before the full parse so that even an argument error
    reaches the console."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--console-fd", type=int, default=None)
    known, _ = pre.parse_known_args(sys.argv[1:] if argv is None else argv)
    return known.console_fd


def _job(args) -> str:
    """What failed, as the console line names it: ``spine-idc shard segment (s00000)``."""
    if args is None:
        return "spine-idc"
    name = f"spine-idc {args.command}"
    if args.command == "shard":
        name += f" {args.stage} ({args.shard.stem})"
    return name


def _tell_console(fd: int | None, args, error: BaseException) -> None:
    """The one-line reason of a failure, on the console (``--console-fd``): a job's own output
    goes to its log, which Snakemake only names."""
    if fd is None:
        return
    text = str(error) if isinstance(error, SpineIdcError) else f"{type(error).__name__}: {error}"
    line = f"{_job(args)}: error: {' '.join(text.split())} (details in the job's log)\n"
    try:
        os.write(fd, line.encode("utf-8", "replace"))
    except OSError:  # not open: the reason is in the log all the same
        pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    console = _console_fd(argv)
    try:
        args = parser.parse_args(argv)
    except SpineIdcError as e:  # --options that fail their schema
        print(f"spine-idc: error: {e}", file=sys.stderr)
        _tell_console(console, None, e)
        return 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except SpineIdcError as e:
        # A fault of the machine keeps its traceback (which file, which call) in the job's log.
        log.error("%s", e, exc_info=e if isinstance(e, MachineFault) else None)
        _tell_console(console, args, e)
        return 1
    except Exception as e:
        if console is None:
            raise
        log.exception("%s failed", _job(args))  # the traceback, in the job's log
        _tell_console(console, args, e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
