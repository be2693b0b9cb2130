# STOW-RS of each finished series' SEG and SR to a DICOMweb store (publish.to: dicomweb).
# Idempotent: instances already in the store are left alone, so a re-run never duplicates them.
# The per-series record (store, viewer URL, per-instance status, or the failure) feeds the cohort.


rule publish:
    input:
        shard=P["shard"],
        finished=done("finish"),
        **publish_packs(),
    output:
        **shard_outputs("publish"),
    params:
        options=literal(section_json(config, "publish")),
        packs=pack_args,
        marker=marker("publish"),
    retries: config["publish"]["retries"]
    log:
        f"{P['logs']}/publish/{{shard}}.log",
    resources:
        mem_mb=2000,
        # The attempt number reaches the job this way; its last attempt records failures.
        publish_attempt=lambda wildcards, attempt: attempt,
    conda:
        ENV
    shell:
        "spine-idc --console-fd 3 shard publish --shard {input.shard} --options {params.options}"
        " --attempt {resources.publish_attempt} {params.packs} --out {params.marker} 3>&2 >> {log} 2>&1"
