# Input functions; kept here so rule files hold only rules.

REMOTE = config["source"] in ("idc", "dicomweb")  # series are downloaded before conversion


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
