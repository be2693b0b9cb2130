# Vertebra segmentation (backend chosen by segment.backend) of every series of a shard: label
# maps and a QC record per series, or failure.json (passed on, or a volume without a spine).


rule segment:
    input:
        shard=P["shard"],
        converted=P["shard_done"].replace("{stage}", "convert"),
    output:
        P["shard_done"].replace("{stage}", "segment"),
    params:
        options=section_json(config, "segment"),
    log:
        f"{P['logs']}/segment/{{shard}}.log",
    resources:
        mem_mb=8000,
        runtime=lambda wildcards: 2 * config["shard_size"] + 10,
    conda:
        ENV
    shell:
        "spine-idc shard segment --shard {input.shard} --options {params.options}"
        " --out {output} > {log} 2>&1"
