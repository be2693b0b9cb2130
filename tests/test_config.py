"""The configuration is validated against its schema before any job runs."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from spine_idc.config import Config, parse_section, section_json, validate_config
from spine_idc.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_shipped_config_is_valid():
    cfg = Config.from_file(REPO / "config.yaml")
    assert cfg.source == "idc"  # `make run`: a small real cohort from IDC
    assert cfg.query["max_series"] and cfg.query["max_series"] <= 5
    assert cfg.segment.backend == "classical"


def test_defaults_come_from_the_schema():
    data = validate_config({})
    assert data["convert"]["min_slices"] == 10 and data["convert"]["repair_blank_uids"] is False
    assert data["phantom"]["count"] >= 1


def test_unknown_key_names_the_key():
    with pytest.raises(ConfigError, match="sorce"):
        validate_config({"sorce": "local"})


def test_unknown_nested_key_names_the_section():
    with pytest.raises(ConfigError, match=r"convert.*min_slice"):
        validate_config({"convert": {"min_slice": 3}})


@pytest.mark.parametrize(
    "bad",
    [{"source": "ftp"}, {"convert": {"min_slices": "ten"}}, {"segment": {"spacing_mm": 0}}],
)
def test_mistyped_values_are_rejected(bad):
    with pytest.raises(ConfigError):
        validate_config(bad)


def test_malformed_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("source: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        Config.from_file(p)


def test_section_round_trip_through_the_shell():
    config = validate_config({"convert": {"min_slices": 4}})
    quoted = section_json(config, "convert")
    (text,) = __import__("shlex").split(quoted)
    assert parse_section(text, "convert").min_slices == 4


def test_cli_validate_config_reports_bad_key(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"source": "local", "segment": {"backnd": "x"}}))
    out = subprocess.run(
        [sys.executable, "-m", "spine_idc.cli", "validate-config", str(p)],
        capture_output=True, text=True,
    )
    assert out.returncode == 1
    assert "backnd" in out.stderr


def test_snakemake_rejects_unknown_key_before_any_job(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow" / "Snakefile"),
         "-n", "--directory", str(tmp_path), "--configfile", str(REPO / "config.yaml"),
         "--config", "sorce=phantom"],
        capture_output=True, text=True,
    )
    assert out.returncode != 0
    assert "sorce" in out.stdout + out.stderr
    assert not (tmp_path / "results").exists()


def test_workflow_lint_is_clean():
    out = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow" / "Snakefile"), "--lint"],
        capture_output=True, text=True, cwd=REPO,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "good condition" in out.stdout + out.stderr


def test_import_is_cheap():
    code = "import sys, spine_idc; print(any(m in sys.modules for m in ('torch', 'highdicom', 'scipy')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False"


def test_nested_command_line_values_are_coerced():
    data = validate_config({"phantom": {"count": "2", "size": "test"}, "convert": {"repair_blank_uids": "true"}})
    assert data["phantom"]["count"] == 2
    assert data["convert"]["repair_blank_uids"] is True
    with pytest.raises(ConfigError):
        validate_config({"phantom": {"count": "two"}})


@pytest.mark.parametrize("key, url", [
    ("dicomweb_url", "http://reader:s3cr3t-pw@localhost:8042/dicom-web"),
    ("dicomweb_url", "https://s3cr3t-pw@healthcare.example/dicomWeb"),
    ("publish.url", "http://writer:s3cr3t-pw@localhost:8042/dicom-web"),
    ("download.endpoint_url", "https://key:s3cr3t-pw@s3.example"),
])
def test_credentials_in_urls_are_refused(key, url):
    section, _, leaf = key.rpartition(".")
    raw = {"source": "dicomweb", "dicomweb_url": "http://localhost:8042/dicom-web"}
    if section:
        raw[section] = {leaf: url}
    else:
        raw[leaf] = url
    with pytest.raises(ConfigError) as err:
        Config.from_dict(raw)
    text = str(err.value) + str(getattr(err.value, "hint", ""))
    assert key in text and "SPINE_IDC_DICOMWEB_TOKEN" in text
    assert "s3cr3t-pw" not in text  # the refusal itself must not leak it


def test_snakemake_refuses_a_password_in_the_url_before_any_job(tmp_path):
    """The password used to reach logs/manifest.log, the Snakemake log and .snakemake/metadata."""
    out = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow" / "Snakefile"),
         "-n", "--directory", str(tmp_path), "--configfile", str(REPO / "config.yaml"),
         "--config", "source=dicomweb",
         "dicomweb_url=http://user:s3cr3t-pw@127.0.0.1:9/dicom-web"],
        capture_output=True, text=True,
    )
    assert out.returncode != 0
    assert "credentials never go into a URL" in out.stdout + out.stderr
    assert "s3cr3t-pw" not in out.stdout + out.stderr
    assert not (tmp_path / "logs").exists() and not (tmp_path / "results").exists()
    assert not any("s3cr3t-pw" in p.read_text(errors="replace")
                   for p in tmp_path.rglob("*") if p.is_file())


# --- a missing model or missing weights are found by the config check ----------------------

def _monai(model) -> dict:
    return {"segment": {"backend": "monai", "model": str(model)}}


def _one_line_error(raw: dict) -> str:
    with pytest.raises(ConfigError) as err:
        validate_config(raw)
    text = str(err.value)
    assert "\n" not in text
    return text


def test_a_missing_monai_model_folder_is_a_config_error(tmp_path):
    text = _one_line_error(_monai(tmp_path / "nowhere"))
    assert "segment.model" in text and repr(str(tmp_path / "nowhere")) in text
    assert "MONAI bundle folder" in text  # what is expected
    assert "segment.model is empty" in _one_line_error(_monai(""))
    assert "neither configs/metadata.json nor model.json" in _one_line_error(_monai(tmp_path))


def test_missing_weights_of_a_monai_model_are_a_config_error(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "model.json").write_text('{"architecture": "SegResNet", "checkpoint": "weights.pt"}')
    text = _one_line_error(_monai(plain))
    assert "segment.model" in text and str(plain) in text and "weights.pt are missing" in text
    (plain / "weights.pt").write_bytes(b"not checked here: the job loads it")
    validate_config(_monai(plain))

    bundle = tmp_path / "bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "configs" / "metadata.json").write_text("{}")
    assert "configs/inference.json" in _one_line_error(_monai(bundle))
    (bundle / "configs" / "inference.json").write_text("{}")
    assert "models/model.pt are missing" in _one_line_error(_monai(bundle))
    (bundle / "models").mkdir()
    (bundle / "models" / "model.pt").write_bytes(b"")
    validate_config(_monai(bundle))
    assert Config.from_dict(_monai(bundle)).segment.model == str(bundle)


def test_a_model_in_a_bucket_is_left_to_the_job():
    validate_config(_monai("gs://bucket/models/spine"))  # cannot be checked offline
    validate_config(_monai("s3://bucket/models/spine"))


def test_missing_totalsegmentator_weights_are_a_config_error(tmp_path):
    pytest.importorskip("totalsegmentator")
    raw = {"segment": {"backend": "totalsegmentator", "home_dir": str(tmp_path / "nowhere")}}
    text = _one_line_error(raw)
    assert "segment.home_dir" in text and str(tmp_path / "nowhere") in text
    raw["segment"]["home_dir"] = str(tmp_path)  # a home folder without its weights
    text = _one_line_error(raw)
    assert "segment.home_dir" in text and "weights for task 'total' are missing" in text
    assert "Dataset292_TotalSegmentator_part2_vertebrae" in text


def test_snakemake_stops_on_a_missing_model_before_any_job(tmp_path):
    """It used to start the run and fail in every segment job, with the reason in the logs."""
    out = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow" / "Snakefile"),
         "--cores", "1", "--directory", str(tmp_path), "--configfile", str(REPO / "config.yaml"),
         "--config", "source=phantom",
         f"segment={{'backend': 'monai', 'model': '{tmp_path / 'nowhere'}', 'device': 'cpu'}}"],
        capture_output=True, text=True,
    )
    assert out.returncode != 0
    lines = [line for line in out.stderr.splitlines() if "segment.model is" in line]
    assert len(lines) == 1 and str(tmp_path / "nowhere") in lines[0], out.stderr
    assert not (tmp_path / "logs").exists() and not (tmp_path / "resources").exists()


# --- the segment section: the chosen backend's own options ---------------------------------

def test_every_backend_declares_what_the_schema_documents():
    """The schema documents each backend's keys for users; the backends declare them. A key or
    default in one and not the other is a backend half added."""
    import dataclasses

    from spine_idc.config import BackendName, load_schema
    from spine_idc.segment import REGISTRY, declaration

    section = load_schema("config")["properties"]["segment"]["properties"]
    assert sorted(section["backend"]["enum"]) == sorted(REGISTRY) == sorted(BackendName)
    declared = {}
    for name in REGISTRY:
        decl = declaration(name)
        assert decl.name == name and decl.version and decl.resources.mem_mb > 0
        for field in dataclasses.fields(decl.options):
            declared.setdefault(field.name, field.default)
            assert section[field.name]["default"] == field.default, (name, field.name)
    assert set(declared) == set(section) - {"backend"}


def test_segment_section_gives_the_backend_only_its_own_options():
    from spine_idc.config import SegmentConfig

    # config.yaml's spacing_mm stays in the section after --config segment={'backend': 'monai'}
    seg = SegmentConfig.from_dict({"backend": "monai", "model": "m", "spacing_mm": 1.0, "fast": True})
    assert seg.backend == "monai" and seg.to_dict() == {
        "backend": "monai", "model": "m", "device": "auto", "amp": True, "sw_batch_size": 4,
        "overlap": 0.25}
    assert seg.replace(model="n").model == "n" and seg.model == "m"
    with pytest.raises(ConfigError, match="segment.modle is not an option of any"):
        SegmentConfig.from_dict({"backend": "classical", "modle": "m"})
    with pytest.raises(ConfigError, match="does not take option.*spacing_mm"):
        SegmentConfig.of("monai", spacing_mm=1.0)  # built in code: strict
    with pytest.raises(ConfigError, match="unknown segmentation backend 'nope'"):
        SegmentConfig.of("nope")


def test_segment_resources_come_from_the_backend_declaration():
    from spine_idc.config import SegmentConfig

    classical = SegmentConfig.of("classical").resources()
    assert (classical.mem_mb, classical.gpu, classical.threads) == (8000, False, 1)
    monai = SegmentConfig.of("monai", model="m").resources()
    assert (monai.mem_mb, monai.gpu, monai.threads) == (12000, True, 4)
    assert SegmentConfig.of("monai", model="m", device="cpu").resources().gpu is False
    assert SegmentConfig.of("totalsegmentator").resources().mem_mb == 16000


def test_stage_names_its_config_section():
    from spine_idc.config import Stage

    assert [s.section for s in Stage] == [None, "convert", "segment", "measure", "publish"]
    assert Stage("segment") == "segment"


def test_segment_stamps_hash_the_same_record_as_before():
    """Stamps written before backends declared their options hashed every segment key: the
    stamp record keeps that shape, so existing work folders are not segmented again."""
    from spine_idc.config import SegmentConfig, load_schema

    keys = set(load_schema("config")["properties"]["segment"]["properties"])
    stamp = SegmentConfig.from_dict(validate_config({})["segment"]).stamp_dict()
    assert set(stamp) == keys and stamp == validate_config({})["segment"]
    # another backend's key is at its default: changing it does not redo this backend's work
    assert SegmentConfig.from_dict({"backend": "classical", "fast": True}).stamp_dict()["fast"] is False


def test_the_schema_offers_every_registered_source_and_no_other():
    """``source`` in the schema and the sources' registry name the same sources: one added to
    the registry without its schema entry (or the reverse) is a source half added."""
    from spine_idc.config import load_schema
    from spine_idc.sources import SOURCES

    schema = load_schema("config")["properties"]
    assert sorted(schema["source"]["enum"]) == sorted(SOURCES)
    assert schema["source"]["default"] in SOURCES


def test_the_schema_documents_what_the_measurements_read():
    """The ``measure`` section's keys and defaults are those the quantities of
    :mod:`spine_idc.measure` declare, and the typed section carries them."""
    import dataclasses

    from spine_idc.config import MeasureConfig, load_schema
    from spine_idc.measure import options

    section = load_schema("config")["properties"]["measure"]["properties"]
    assert {k: v["default"] for k, v in section.items()} == options()
    assert {f.name for f in dataclasses.fields(MeasureConfig)} == set(options())
