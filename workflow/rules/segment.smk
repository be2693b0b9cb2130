# Vertebra segmentation (backend chosen by segment.backend) of every series of a shard: label
# maps and a QC record per series, or failure.json (passed on, or a volume without a spine).


rule segment:
    input:
        shard=P["shard"],
        converted=done("convert"),
        **unpacked("convert"),
        **segment_model(),
    output:
        **shard_outputs("segment"),
    params:
        options=literal(section_json(config, "segment")),
        packs=pack_args,
        marker=marker("segment"),
        model=model_arg,
    log:
        f"{P['logs']}/segment/{{shard}}.log",
    threads: SEGMENT_RESOURCES.threads
    resources:
        # The backend's declaration (spine_idc.segment.Resources): the pipeline holds at most
        # three series (loading, inferring, writing), so memory does not grow with the shard.
        mem_mb=SEGMENT_RESOURCES.mem_mb,
        # Minutes: per series, the slowest case (the classical method or a network on a CPU
        # takes a minute or two; on a GPU a few seconds), plus loading the model.
        runtime=lambda wildcards: SEGMENT_MINUTES_PER_SERIES * config["shard_size"] + 10,
        # With the Slurm executor (profile `gpu`): the GPU partition only when a GPU is asked.
        slurm_partition=SEGMENT_SLURM_PARTITION,
        # A GPU, only when the backend uses one (see common.smk).
        **SEGMENT_GPU_RESOURCES,
    conda:
        ENV
    shell:
        "spine-idc --console-fd 3 shard segment --shard {input.shard} --options {params.options}"
        " --threads {threads} {params.model} {params.packs} --out {params.marker} 3>&2 > {log} 2>&1"
