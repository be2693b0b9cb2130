# Input functions; kept here so rule files hold only rules.
import os

REMOTE = config["source"] in ("idc", "dicomweb")  # series are downloaded before conversion


def manifest_input(wildcards):
    """The folder the manifest scans (local and phantom sources); remote sources need none."""
    if config["source"] == "phantom":
        return {"folder": P["phantoms"]}
    if config["source"] == "local":
        return {"folder": config["input_dir"]}
    return {}


def convert_input(wildcards):
    inputs = {"manifest": ancient(P["manifest"])}
    if REMOTE:
        inputs["downloaded"] = P["download"].format(series=wildcards.series)
    return inputs


def series_products(wildcards):
    """What a series must produce, decided by its segment checkpoint.

    One checkpoint per series, not a chain: a failed conversion is passed on by the segment
    stage, so a single get() decides (chained checkpoint gets are not re-resolved when a
    killed run resumes).
    """
    segmented = P["segment"].format(series=wildcards.series)
    if not os.path.isdir(segmented):  # published atomically: present means finished
        # Not segmented yet: wait for the checkpoint. (A folder finished in an earlier run is
        # read directly: Snakemake 9 leaves this get() unresolved, `<TBD>`, when the manifest
        # checkpoint before it is already done, and would run `outcome` without its inputs.)
        segmented = checkpoints.segment.get(series=wildcards.series).output[0]
    if read_failure(segmented):
        return [segmented]
    products = [P["measure"], P["seg"], P["sr"]]
    if config["publish"]["to"] == "dicomweb":
        products.append(P["publish"])
    return expand(products, series=wildcards.series)


def all_series_outcomes(wildcards):
    from spine_idc.manifest import read_manifest

    manifest = checkpoints.manifest.get().output.manifest
    keys = [row.series_key for row in read_manifest(manifest)]
    return expand("work/outcome/{series}.done", series=keys)
