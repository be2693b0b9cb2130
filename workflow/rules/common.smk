# Input functions; kept here so rule files hold only rules.
import os
import shlex

from snakemake.exceptions import WorkflowError

from spine_idc.config import SegmentConfig
from spine_idc.sources import get_source

SOURCE = get_source(config["source"])  # where the series come from (spine_idc.sources)
REMOTE = SOURCE.remote  # series are downloaded before conversion

# Without a shared filesystem (a default storage provider, as in the gcp-batch and k8s
# profiles) only declared files travel between jobs: each shard job then writes a pack of its
# series' outputs and its marker, its one declared output, and the jobs after it unpack the
# packs they read (spine_idc.pipeline.packs).
# Decided by the storage settings, which the main process passes on to every job, so that both
# see the same rules.
PACKS = workflow.storage_settings.default_storage_provider is not None
if PACKS and not REMOTE:
    raise WorkflowError(
        f"source: {config['source']} reads files on this machine, which jobs on other machines "
        "(no shared filesystem: --default-storage-provider) cannot see; use source idc or "
        "dicomweb there, or run on a shared filesystem (profiles local, gpu)"
    )

# The chosen backend and its own options; what its segment job needs is the backend's to declare
# (its Declaration's resources: memory, GPU unless told device: cpu, threads).
SEGMENT = SegmentConfig.from_dict(config["segment"])
SEGMENT_RESOURCES = SEGMENT.resources()

# A missing model or missing weights stop the run here, before any job starts: on a shared
# filesystem the jobs see the files this machine sees. Without one, a local path names a file on
# the job's machine, so the segment job checks it there (as it checks a model in a bucket).
if not PACKS:
    SEGMENT.check()

SEGMENT_GPUS = 1 if SEGMENT_RESOURCES.gpu else 0
SEGMENT_MINUTES_PER_SERIES = 1 if SEGMENT_GPUS else 2
# A network's model folder in a bucket (segment.model: gs://... or s3://...) is an input of
# segment: Snakemake's storage plugin fetches it into the job, so that no image has to carry
# weights and every node reads the same ones.
MODEL_IN_STORAGE = "://" in SEGMENT.model
# The partitions are the `gpu` profile's site variables (see workflow/profiles/gpu); other
# executors ignore slurm_partition. Empty: the cluster's default partition.
SEGMENT_SLURM_PARTITION = (
    os.environ.get("SPINE_IDC_SLURM_GPU_PARTITION", "gpu") if SEGMENT_GPUS
    else os.environ.get("SPINE_IDC_SLURM_CPU_PARTITION", "")
)
# What a GPU job asks of each executor; each reads its own names and ignores the others'.
# Snakemake's standard `gpu` is Slurm's --gpus, `--resources gpu=1` on a workstation and the
# Kubernetes plugin's nvidia.com/gpu; on Kubernetes also the GPU node pool's machine type, the
# GPU's maker (for the plugin's toleration) and scale=0 (the plugin then sets limits, the only
# way Kubernetes gives a GPU). Google Batch takes an accelerator type (nvidia_gpu; Batch then
# installs the driver) and a machine that carries it. The names are the cloud profiles' site
# variables (workflow/profiles/gcp-batch, k8s). None of this for a CPU segmentation, which then
# runs where every CPU job runs.
SEGMENT_GPU_RESOURCES = {
    "gpu": 1,
    "gpu_manufacturer": "nvidia",
    "machine_type": os.environ.get("SPINE_IDC_K8S_GPU_MACHINE", "g2-standard-8"),
    "scale": 0,
    "nvidia_gpu": os.environ.get("SPINE_IDC_GCP_GPU", "nvidia-l4"),
    "googlebatch_machine_type": os.environ.get("SPINE_IDC_GCP_GPU_MACHINE", "g2-standard-8"),
    "googlebatch_cpu_milli": 8000,
    "googlebatch_memory": 28000,
} if SEGMENT_GPUS else {}


def pack(stage):
    return P["pack"].replace("{stage}", stage)


def done(stage):
    """The file that says a shard is through ``stage``: its marker, or without a shared
    filesystem its pack, which then holds the marker too. One declared file per shard job:
    Snakemake asks the bucket about each declared file one request at a time."""
    return pack(stage) if PACKS else P["shard_done"].replace("{stage}", stage)


def shard_outputs(stage):
    """A shard job's one output (see done)."""
    return {"pack": done(stage)} if PACKS else {"marker": done(stage)}


def literal(value):
    """A params value Snakemake passes through as it is: a plain string param is read as a
    wildcard pattern, so a config string holding ``{study}`` (a documented viewer template),
    a regex like ``^ax{1,2}`` or a folder with braces would stop the run."""
    return lambda wildcards: value


def marker(stage):
    """Param: where the job writes its marker (the output, or a file that goes into the pack)."""
    return lambda wildcards, output: (
        P["shard_done"].format(stage=stage, shard=wildcards.shard) if PACKS else output.marker
    )


def segment_model():
    """Input: the model folder when it lives in a bucket (fetched by the storage plugin)."""
    return {"model": storage(SEGMENT.model)} if MODEL_IN_STORAGE else {}


def model_arg(wildcards, input):
    """The job reads the fetched copy, not the bucket's address in segment.model."""
    return f"--model {shlex.quote(input.model)}" if "model" in input.keys() else ""


def unpacked(*stages):
    """Input: the packs of ``stages`` for this shard (none on a shared filesystem)."""
    return {"packs": [pack(s) for s in stages]} if PACKS else {}


def pack_args(wildcards, input, output):
    """The job's --unpack/--pack arguments (empty on a shared filesystem)."""
    args = [f"--unpack {shlex.quote(p)}" for p in input.get("packs", [])]
    if "pack" in output.keys():
        args.append(f"--pack {shlex.quote(output.pack)}")
    return " ".join(args)


def manifest_input(wildcards):
    """The folder the manifest scans (local and phantom sources); remote sources need none."""
    folder = SOURCE.input_folder(config)
    if folder is not None and not set("{}") & set(folder):
        return {"folder": folder}
    # Input paths are read as wildcard patterns: a folder whose name holds braces would stop
    # the run, so it reaches the job as a parameter only (folder_arg); the manifest step
    # reports a missing folder itself.
    return {}


def folder_arg(wildcards, input):
    """The manifest's --input-dir: the generated phantoms, or the configured local folder."""
    if "folder" in input.keys():
        return f"--input-dir {shlex.quote(input.folder)}"
    folder = SOURCE.input_folder(config)
    return f"--input-dir {shlex.quote(folder)}" if folder is not None else ""


def convert_input(wildcards):
    inputs = {"shard": P["shard"].format(shard=wildcards.shard)}
    if REMOTE:
        inputs["downloaded"] = done("download").format(shard=wildcards.shard)
        inputs.update(unpacked("download"))
    return inputs


def finish_packs():
    # The SEG references the source files, which are in the download folder for remote series.
    return unpacked(*(("download",) if REMOTE else ()), "convert", "segment")


def publish_packs():
    # The finish pack carries series.json; the source files only when they are published too.
    with_source = REMOTE and config["publish"]["include_source"]
    return unpacked(*(("download",) if with_source else ()), "finish")


def shard_tables():
    """The manifest's shard tables folder (waits for the checkpoint) and the shard ids in it."""
    from spine_idc.pipeline.shards import read_shard_ids

    folder = checkpoints.manifest.get().output.shards
    return folder, read_shard_ids(folder)


def cohort_packs(wildcards):
    """Without a shared filesystem the cohort reads the last stages' packs of every shard."""
    if not PACKS:
        return {}
    folder, shards = shard_tables()
    return {"packs": expand(P["pack"], stage=COHORT_PACK_STAGES, shard=shards), "shard_tables": folder}


def cohort_pack_args(wildcards, input):
    if not PACKS or "packs" not in input.keys() or not input.packs:  # not known yet, or no series
        return ""
    # A folder, not a list: at 100,000 series the list would not fit on a command line.
    packs_dir = os.path.dirname(os.path.dirname(input.packs[0]))
    stages = " ".join(COHORT_PACK_STAGES)
    return f"--packs {shlex.quote(packs_dir)} --shards {shlex.quote(input.shard_tables)} --pack-stages {stages}"


COHORT_PACK_STAGES = ["finish"] + (["publish"] if config["publish"]["to"] == "dicomweb" else [])


def all_shards_done(wildcards):
    """Every shard's last stage (finish, or publish when results are published) done."""
    return expand(done(COHORT_PACK_STAGES[-1]), shard=shard_tables()[1])
