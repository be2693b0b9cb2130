"""The workflow configuration: validated against its JSON Schema once, at the edge, then typed.

``config.yaml`` (or Snakemake's ``config`` dict, after ``--config`` overrides) is checked against
``schemas/config.schema.yaml``: unknown or mistyped keys are an error that names the key, before
any job starts.  Defaults come from the schema, so the schema is the one place they are written.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import shlex
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError


def schema_path(name: str = "config") -> Path:
    """Path of a bundled JSON Schema (``config`` or ``manifest``)."""
    return Path(str(resources.files("spine_idc") / "schemas" / f"{name}.schema.yaml"))


def load_schema(name: str = "config") -> dict:
    return yaml.safe_load(schema_path(name).read_text())


def _fill_defaults(instance: dict, schema: dict) -> None:
    for key, sub in schema.get("properties", {}).items():
        if key not in instance and "default" in sub:
            instance[key] = copy.deepcopy(sub["default"])
        if isinstance(instance.get(key), dict) and sub.get("type") == "object":
            _fill_defaults(instance[key], sub)


def _coerce(value: Any, kind: str | list | None) -> Any:
    if not isinstance(value, str):
        return value
    if isinstance(kind, list):  # e.g. [integer, "null"]: the first reading that fits
        if "null" in kind and value.strip().lower() in {"null", "none", "~"}:
            return None
        for one in kind:
            coerced = _coerce(value, one)
            if coerced is not value:
                return coerced
        return value
    try:
        if kind == "integer":
            return int(value)
        if kind == "number":
            number = float(value)
            return number if math.isfinite(number) else value  # NaN would pass min/max checks
    except ValueError:
        return value
    if kind == "boolean" and value.lower() in {"true", "false"}:
        return value.lower() == "true"
    return value


def coerce_types(instance: dict, schema: dict | None = None) -> dict:
    """Turn strings into the numbers and booleans the schema asks for, in place.

    Snakemake parses nested ``--config key={'a': 2}`` values with YAML's BaseLoader, so they
    arrive as strings; without this, ``--config phantom={'count': 2}`` would be rejected.
    """
    schema = schema or load_schema("config")
    for key, sub in schema.get("properties", {}).items():
        if key not in instance:
            continue
        if isinstance(instance[key], dict) and sub.get("type") == "object":
            coerce_types(instance[key], sub)
        else:
            instance[key] = _coerce(instance[key], sub.get("type"))
    return instance


def _reject_non_finite(data: Any, where: str = "") -> None:
    if isinstance(data, dict):
        for key, value in data.items():
            _reject_non_finite(value, f"{where}.{key}" if where else str(key))
    elif isinstance(data, float) and not math.isfinite(data):
        raise ConfigError(f"invalid configuration: {where} is {data}, not a finite number")


def validate_config(raw: dict | None) -> dict:
    """Return a copy of ``raw`` with defaults filled in, or raise :class:`ConfigError`."""
    import jsonschema

    data = copy.deepcopy(raw or {})
    schema = load_schema("config")
    coerce_types(data, schema)
    _reject_non_finite(data)
    _fill_defaults(data, schema)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for err in errors:
            where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
            lines.append(f"  {where}: {err.message}")
        raise ConfigError(
            "invalid configuration:\n" + "\n".join(lines),
            hint="see workflow/schemas/config.schema.yaml for every key, its type and default",
        )
    reject_credentials_in_urls(data)
    check_segment_model(data)
    return data


#: Keys whose value is a URL (dotted paths into the configuration).
URL_KEYS = ("dicomweb_url", "publish.url", "download.endpoint_url")


def reject_credentials_in_urls(data: dict) -> None:
    """A user name or password inside a URL (``http://user:secret@host/``) would be sent, and
    also written to every log and to Snakemake's metadata, so it is refused here, before any
    job runs."""
    from urllib.parse import urlsplit

    for key in URL_KEYS:
        value: object = data
        for part in key.split("."):
            value = value.get(part, "") if isinstance(value, dict) else ""
        if not isinstance(value, str) or not value:
            continue
        try:
            parts = urlsplit(value)
            userinfo = parts.username is not None or parts.password is not None
        except ValueError:
            userinfo = "@" in value.split("/")[2] if value.count("/") >= 2 else False
        if userinfo:
            scheme_host = value.split("@", 1)[-1]
            raise ConfigError(
                f"{key} holds a user name or password (…@{scheme_host}): credentials never go "
                "into a URL, where they would be written to the logs",
                hint="remove them from the URL and set SPINE_IDC_DICOMWEB_TOKEN, or "
                     "SPINE_IDC_DICOMWEB_USER and SPINE_IDC_DICOMWEB_PASSWORD, with "
                     "dicomweb.auth / publish.auth: env",
            )


_MODEL_HINT = ("point segment.model at a MONAI bundle folder (configs/metadata.json, "
               "configs/inference.json, models/model.pt), a folder with model.json and its "
               "checkpoint, or a bucket address (gs://..., s3://...)")
_BUNDLE_CONFIGS = ("inference.json", "inference.yaml", "inference.yml")


def check_segment_model(data: dict) -> None:
    """The segmenter's model and weights are on this machine, or :class:`ConfigError` (one line
    naming the key, its value and what is expected), so that a run without them stops before
    any job starts instead of failing in every segment job.

    ``monai``: ``segment.model`` must be a model folder in one of the two forms
    :func:`spine_idc.segment.networks.model.load_model` reads, with its weights file.  A bucket address
    (``gs://``, ``s3://``, any ``scheme://``) cannot be checked offline: the job fetches it and
    says what is wrong.  ``totalsegmentator``: the package and the weights of every model the
    configured mode runs (``segment.home_dir``, else TotalSegmentator's own default).  Only the
    files are looked at: whether the weights fit the network is the job's to find.
    """
    segment = data.get("segment") or {}
    backend = segment.get("backend", "classical")
    if backend == "monai":
        _check_monai_model(str(segment.get("model") or ""))
    elif backend == "totalsegmentator":
        _check_totalseg_weights(segment)


def _check_monai_model(model: str) -> None:
    if not model.strip():
        raise ConfigError("segment.model is empty: segment.backend monai needs a model folder",
                          hint=_MODEL_HINT)
    if "://" in model:
        return  # in a bucket: fetched into the job (common.smk), checked there
    folder = Path(model).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"segment.model is {model!r}: no such folder (expected a model folder "
                          "for segment.backend monai)", hint=_MODEL_HINT)
    meta_path = folder / "configs" / "metadata.json"
    if meta_path.is_file():  # a MONAI bundle
        if not any((folder / "configs" / name).is_file() for name in _BUNDLE_CONFIGS):
            raise ConfigError(f"segment.model is {model!r}: a MONAI bundle without "
                              "configs/inference.json (or .yaml)", hint=_MODEL_HINT)
        description, default = meta_path, "models/model.pt"
        own = _read_json_object(meta_path, model).get("spine_idc", {})
    elif (folder / "model.json").is_file():
        description, default = folder / "model.json", "model.pt"
        own = _read_json_object(description, model)
    else:
        raise ConfigError(f"segment.model is {model!r}: neither configs/metadata.json nor "
                          "model.json in that folder", hint=_MODEL_HINT)
    checkpoint = own.get("checkpoint", default) if isinstance(own, dict) else default
    if not (folder / str(checkpoint)).is_file():
        raise ConfigError(f"segment.model is {model!r}: its weights {checkpoint} are missing "
                          f"(as {description.relative_to(folder)} says)", hint=_MODEL_HINT)


def _read_json_object(path: Path, model: str) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"segment.model is {model!r}: {path.name} is not readable JSON: "
                          f"{' '.join(str(e).split())}") from e
    if not isinstance(value, dict):
        raise ConfigError(f"segment.model is {model!r}: {path.name} does not hold a JSON object")
    return value


def _check_totalseg_weights(segment: dict) -> None:
    try:
        from .segment.networks.totalseg import _env, missing_weights, weights_dir
    except ImportError as e:  # only the backend's own imports fail here
        raise ConfigError(f"segment.backend is totalsegmentator but it cannot be loaded ({e})",
                          hint="pip install '.[totalseg]'") from e
    home = segment.get("home_dir")
    if home is not None and not Path(str(home)).expanduser().is_dir():
        raise ConfigError(f"segment.home_dir is {home!r}: no such folder (expected "
                          "TotalSegmentator's home folder, holding nnunet/results)",
                          hint="leave it out to use TotalSegmentator's own (~/.totalsegmentator)")
    try:
        with _env(None if home is None else str(Path(str(home)).expanduser())):
            root = weights_dir()
            missing = missing_weights(bool(segment.get("fast")), bool(segment.get("with_cord")))
    except ImportError as e:
        raise ConfigError(f"segment.backend is totalsegmentator but the TotalSegmentator package "
                          f"is not installed ({e})", hint="pip install '.[totalseg]'") from e
    if missing:
        task = "total_fast" if segment.get("fast") else "total"
        where = f"segment.home_dir is {home!r}" if home is not None else "segment.home_dir is unset"
        raise ConfigError(
            f"segment.backend is totalsegmentator ({where}): the weights for task {task!r} are "
            f"missing from {root}: " + "; ".join(missing),
            hint=f"fetch them once with `totalseg_download_weights -t {task}` where there is "
                 "internet access, then set segment.home_dir (or TOTALSEG_HOME_DIR) to a copy "
                 "of that ~/.totalsegmentator folder")


@dataclasses.dataclass(frozen=True)
class PhantomConfig:
    count: int
    first_seed: int
    size: str
    levels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "levels", tuple(self.levels))

    @property
    def seeds(self) -> list[int]:
        return list(range(self.first_seed, self.first_seed + self.count))


@dataclasses.dataclass(frozen=True)
class SegmentConfig:
    backend: str
    spacing_mm: float = 1.0
    model: str = ""
    device: str = "auto"
    amp: bool = True
    sw_batch_size: int = 4
    overlap: float = 0.25
    fast: bool = False
    with_cord: bool = False
    home_dir: str | None = None


@dataclasses.dataclass(frozen=True)
class MeasureConfig:
    erosion_mm: float


@dataclasses.dataclass(frozen=True)
class DownloadConfig:
    endpoint_url: str
    retries: int
    tool_retries: int
    backoff_s: float
    timeout_s: float
    stall_s: float
    probe_timeout_s: float


@dataclasses.dataclass(frozen=True)
class PublishConfig:
    to: str
    url: str
    auth: str
    replace: bool
    include_source: bool
    retries: int
    tool_retries: int
    backoff_s: float
    timeout_s: float
    viewer_template: str


@dataclasses.dataclass(frozen=True)
class DicomwebConfig:
    auth: str


@dataclasses.dataclass(frozen=True)
class Remote:
    """How to reach the source of remote series: the run's download and DICOMweb settings.

    What :meth:`spine_idc.sources.base.Source.fetch` and ``probe`` are given; here, beside the
    sections it is made of, so that the sources depend on the configuration and not back.
    """

    download: DownloadConfig
    dicomweb_url: str = ""
    dicomweb_auth: str = "env"


@dataclasses.dataclass(frozen=True)
class IdcConfig:
    index: str
    indices_dir: str
    bigquery_project: str
    bigquery_dataset: str


@dataclasses.dataclass(frozen=True)
class Config:
    """The typed, validated configuration."""

    source: str
    shard_size: int
    dicomweb_url: str
    query: dict[str, Any]
    idc: IdcConfig
    download: DownloadConfig
    dicomweb: DicomwebConfig
    publish: PublishConfig
    input_dir: Path
    phantom: PhantomConfig
    convert: dict[str, Any]
    segment: SegmentConfig
    measure: MeasureConfig
    fail_on_series_errors: bool = False

    @classmethod
    def from_dict(cls, raw: dict | None) -> "Config":
        data = validate_config(raw)
        return cls(
            source=data["source"],
            shard_size=data["shard_size"],
            dicomweb_url=data["dicomweb_url"],
            query=dict(data["query"]),
            idc=IdcConfig(**data["idc"]),
            download=DownloadConfig(**data["download"]),
            dicomweb=DicomwebConfig(**data["dicomweb"]),
            publish=PublishConfig(**data["publish"]),
            input_dir=Path(data["input_dir"]),
            phantom=PhantomConfig(**data["phantom"]),
            convert=dict(data["convert"]),
            segment=SegmentConfig(**data["segment"]),
            measure=MeasureConfig(**data["measure"]),
            fail_on_series_errors=data["fail_on_series_errors"],
        )

    @classmethod
    def from_file(cls, path: str | Path) -> "Config":
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text())
        except FileNotFoundError as e:
            raise ConfigError(f"configuration file {path} not found") from e
        except yaml.YAMLError as e:
            raise ConfigError(f"configuration file {path} is not valid YAML: {e}") from e
        if raw is not None and not isinstance(raw, dict):
            raise ConfigError(f"configuration file {path} must hold a mapping of keys")
        return cls.from_dict(raw)

    def remote(self) -> Remote:
        """What the download stage needs to reach the source."""
        return Remote(self.download, self.dicomweb_url, self.dicomweb.auth)

    def convert_options(self):
        from .convert import ConvertOptions

        return ConvertOptions(**self.convert)


def _convert_options(**kwargs):
    from .convert import ConvertOptions

    return ConvertOptions(**kwargs)


SECTION_TYPES = {
    "query": dict,
    "idc": IdcConfig,
    "download": DownloadConfig,
    "dicomweb": DicomwebConfig,
    "publish": PublishConfig,
    "phantom": PhantomConfig,
    "convert": _convert_options,
    "segment": SegmentConfig,
    "measure": MeasureConfig,
}


def _subset_json(config: dict, keys: tuple[str, ...], download_keys: tuple[str, ...] | None = None) -> str:
    """Part of the validated configuration as a shell-quoted JSON argument (``--config-json``).

    A job gets only the keys it depends on, so that Snakemake re-runs it when those change and
    not when, say, the segmenter's options do.
    """
    subset = {k: config[k] for k in keys if k in config}
    if download_keys is not None:
        download = config.get("download", {})
        subset["download"] = {k: download[k] for k in download_keys if k in download}
    return shlex.quote(json.dumps(subset, sort_keys=True))


COHORT_KEYS = ("source", "shard_size", "dicomweb_url", "input_dir", "query", "idc", "dicomweb")


def cohort_config_json(config: dict) -> str:
    """What selects the cohort (and the endpoint the manifest job probes): the manifest's input."""
    return _subset_json(config, COHORT_KEYS, ("endpoint_url", "probe_timeout_s"))


def remote_config_json(config: dict) -> str:
    """What the download stage needs: the source and how to reach it."""
    return _subset_json(config, ("source", "dicomweb_url", "dicomweb", "download"))


def section_json(config: dict, section: str) -> str:
    """A config section as a shell-quoted JSON argument, for ``--options`` of a CLI verb.

    Used by the rules so that a job sees exactly the validated configuration of the run,
    including ``--config`` overrides, without re-reading ``config.yaml``.
    """
    return shlex.quote(json.dumps(config[section], sort_keys=True))


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a finite number")


def parse_section(text: str, section: str):
    """Inverse of :func:`section_json`: the section validated and as its typed record."""
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except (json.JSONDecodeError, ValueError) as e:
        raise ConfigError(f"--options for {section} is not valid JSON: {e}") from e
    data = validate_config({section: value})[section]
    return SECTION_TYPES[section](**data)
