# Input functions; kept here so rule files hold only rules.
import os

REMOTE = config["source"] in ("idc", "dicomweb")  # series are downloaded before conversion

# The segment job's needs follow its backend: the networks want a GPU (unless told cpu).
_NETWORK = config["segment"]["backend"] in ("monai", "totalsegmentator")
SEGMENT_GPUS = 1 if _NETWORK and config["segment"]["device"] != "cpu" else 0
SEGMENT_MEM_MB = {"classical": 8000, "monai": 12000, "totalsegmentator": 16000}[config["segment"]["backend"]]
SEGMENT_MINUTES_PER_SERIES = 1 if SEGMENT_GPUS else 2
SEGMENT_THREADS = 4 if _NETWORK else 1  # loader and writer threads beside the GPU
# The partitions are the `gpu` profile's site variables (see workflow/profiles/gpu); other
# executors ignore slurm_partition. Empty: the cluster's default partition.
SEGMENT_SLURM_PARTITION = (
    os.environ.get("SPINE_IDC_SLURM_GPU_PARTITION", "gpu") if SEGMENT_GPUS
    else os.environ.get("SPINE_IDC_SLURM_CPU_PARTITION", "")
)


def manifest_input(wildcards):
    """The folder the manifest scans (local and phantom sources); remote sources need none."""
    if config["source"] == "phantom":
        return {"folder": P["phantoms"]}
    if config["source"] == "local":
        return {"folder": config["input_dir"]}
    return {}


def convert_input(wildcards):
    inputs = {"shard": P["shard"].format(shard=wildcards.shard)}
    if REMOTE:
        inputs["downloaded"] = P["shard_done"].format(stage="download", shard=wildcards.shard)
    return inputs


def all_shards_done(wildcards):
    """Every shard's last marker (finish, or publish when results are published)."""
    from spine_idc.shards import read_shard_ids

    shards = read_shard_ids(checkpoints.manifest.get().output.shards)
    last = "publish" if config["publish"]["to"] == "dicomweb" else "finish"
    return expand(P["shard_done"], stage=last, shard=shards)
