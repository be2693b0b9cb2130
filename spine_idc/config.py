"""The workflow configuration: validated against its JSON Schema once, at the edge, then typed.

``config.yaml`` (or Snakemake's ``config`` dict, after ``--config`` overrides) is checked against
``schemas/config.schema.yaml``: unknown or mistyped keys are an error that names the key, before
any job starts.  Defaults come from the schema, so the schema is the one place they are written.

Over 400 lines: the typed sections of the workflow's configuration (phantom, segment,
measure, download, publish, DICOMweb, IDC) and the schema validation that fills them; a section is read with its neighbours (the backend's options with the segment
section, the sources' with the query), and the schema file is the other half.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import functools
import json
import math
import shlex
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .segment import REGISTRY as _BACKENDS


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


def check_segment_model(data: dict) -> None:
    """The segmenter's model and weights are on this machine, or :class:`ConfigError` (one line
    naming the key, its value and what is expected), so that a run without them stops before
    any job starts instead of failing in every segment job.  What is checked is the chosen
    backend's to say (its declaration's ``check``: a model folder for ``monai``, the package and
    weights for ``totalsegmentator``, nothing for ``classical``)."""
    SegmentConfig.from_dict(data.get("segment") or {}).check()


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


#: The ``segment.backend`` values, one per registered backend (:data:`spine_idc.segment.REGISTRY`):
#: a new backend needs no line here.  Members are strings (``BackendName.MONAI == "monai"``).
BackendName = enum.StrEnum("BackendName", {name.upper(): name for name in _BACKENDS})


class Stage(enum.StrEnum):
    """The per-shard stages of the workflow, in order (``spine-idc shard <stage>``)."""

    DOWNLOAD = "download"
    CONVERT = "convert"
    SEGMENT = "segment"
    FINISH = "finish"
    PUBLISH = "publish"

    @property
    def section(self) -> str | None:
        """The config section the stage's job takes as ``--options`` (download: the source
        settings, which are not one section)."""
        return {"download": None, "finish": "measure"}.get(self.value, self.value)


@functools.cache
def _segment_defaults() -> dict[str, Any]:
    """Every ``segment`` key some backend takes, with its default, as the schema lists them."""
    section = load_schema("config")["properties"]["segment"]["properties"]
    return {key: sub.get("default") for key, sub in section.items() if key != "backend"}


def _segment_keys() -> frozenset[str]:
    return frozenset(_segment_defaults())


@dataclasses.dataclass(frozen=True)
class SegmentConfig:
    """The ``segment`` section: which backend, and that backend's own options.

    Users write one flat section (``backend: monai``, ``model: ...``, ``device: ...``); each
    backend declares the keys it reads as an options dataclass
    (:class:`spine_idc.segment.Declaration`), and only those reach it.  The keys of other
    backends that a section carries (the defaults the schema fills in, ``config.yaml``'s
    ``spacing_mm`` after ``--config segment={'backend': 'monai', ...}``) are set aside, as
    before; a key no backend takes is an error.

    Attributes
    ----------
    backend:
        The chosen backend.
    options:
        An instance of its declaration's ``options`` dataclass.
    """

    backend: BackendName
    options: Any

    def __post_init__(self) -> None:
        object.__setattr__(self, "backend", _backend_name(self.backend))
        wanted = self.declaration.options
        if not isinstance(self.options, wanted):
            raise ConfigError(f"segment.backend {self.backend} takes {wanted.__name__} options, "
                              f"not {type(self.options).__name__}")

    @classmethod
    def of(cls, backend: str = "classical", **options: Any) -> "SegmentConfig":
        """From keyword options, strictly: a key ``backend`` does not take is an error naming it."""
        from .segment import make_options

        return cls(_backend_name(backend), make_options(str(backend), **options))

    @classmethod
    def from_dict(cls, section: dict) -> "SegmentConfig":
        """From the flat section as the schema validated it (see the class docstring)."""
        from .segment import declaration

        values = dict(section)
        name = _backend_name(values.pop("backend", "classical"))
        options = declaration(name).options
        takes = [f.name for f in dataclasses.fields(options)]
        unknown = sorted(set(values) - set(takes) - _segment_keys())
        if unknown:
            raise ConfigError(f"segment.{unknown[0]} is not an option of any segmentation backend "
                              f"(segment.backend {name} takes: {', '.join(takes) or 'none'})")
        return cls(name, options(**{k: values[k] for k in takes if k in values}))

    def to_dict(self) -> dict[str, Any]:
        """The flat section of this backend: ``backend`` and its own options."""
        return {"backend": str(self.backend), **dataclasses.asdict(self.options)}

    def stamp_dict(self) -> dict[str, Any]:
        """What the segment stage's stamps hash: every ``segment`` key, the other backends' at
        their defaults.  The flat section of before (one record with every backend's keys) is
        what older stamps hashed, so work folders stamped then keep their results; a change to
        another backend's key no longer redoes this one's segmentations."""
        return {**_segment_defaults(), **self.to_dict()}

    def replace(self, **changes: Any) -> "SegmentConfig":
        """A copy with some of the backend's options changed (a key it does not take: an error)."""
        return SegmentConfig.of(self.backend, **{**dataclasses.asdict(self.options), **changes})

    @property
    def declaration(self):
        """The chosen backend's :class:`~spine_idc.segment.Declaration`."""
        from .segment import declaration

        return declaration(self.backend)

    @property
    def model(self) -> str:
        """The model folder the backend reads (``""`` for a backend that reads none): a bucket
        address here is fetched into the segment job by Snakemake's storage plugin."""
        return str(getattr(self.options, "model", "") or "")

    def resources(self):
        """What a segment job needs (:class:`~spine_idc.segment.Resources`), from the backend's
        declaration and these options (``device: cpu`` asks for no GPU)."""
        return self.declaration.resources_for(self.options)

    def check(self) -> None:
        """Raise :class:`ConfigError` when what the options name is not on this machine."""
        check = self.declaration.check
        if check is not None:
            check(self.options)

    def identity(self) -> str:
        """What, beyond the options, a segmentation depends on (weights' checksum, a version)."""
        identity = self.declaration.identity
        return identity(self.options) if identity is not None else ""

    def build(self):
        """The backend, built (this may load a model)."""
        from .segment import build

        return build(self.backend, self.options)


def _backend_name(name: Any) -> BackendName:
    try:
        return BackendName(str(name))
    except ValueError:
        raise ConfigError(f"unknown segmentation backend {str(name)!r}; choose one of: "
                          + ", ".join(sorted(_BACKENDS))) from None


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
            segment=SegmentConfig.from_dict(data["segment"]),
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


def _segment_config(**section):
    return SegmentConfig.from_dict(section)


SECTION_TYPES = {
    "query": dict,
    "idc": IdcConfig,
    "download": DownloadConfig,
    "dicomweb": DicomwebConfig,
    "publish": PublishConfig,
    "phantom": PhantomConfig,
    "convert": _convert_options,
    "segment": _segment_config,
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
