# DICOM -> HU volume with checked geometry, for every series of a shard. A series that fails its
# checks (or whose download failed) gets failure.json instead of a volume, passed on by the
# later stages.


rule convert:
    input:
        unpack(convert_input),
    output:
        **shard_outputs("convert"),
    params:
        options=literal(section_json(config, "convert")),
        packs=pack_args,
        marker=marker("convert"),
    log:
        f"{P['logs']}/convert/{{shard}}.log",
    resources:
        mem_mb=4000,
        runtime=lambda wildcards: 2 * config["shard_size"] + 5,
    conda:
        ENV
    shell:
        "spine-idc --console-fd 3 shard convert --shard {input.shard} --options {params.options}"
        " {params.packs} --out {params.marker} 3>&2 > {log} 2>&1"
