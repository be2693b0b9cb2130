# Per series of a shard: measurements, then the DICOM Segmentation and the TID 1500 Structured
# Report (results/series/<key>/seg.dcm, sr.dcm), or a recorded failure (work/finish/<key>.json).


rule finish:
    input:
        shard=P["shard"],
        segmented=done("segment"),
        **finish_packs(),
    output:
        **shard_outputs("finish"),
    params:
        options=literal(section_json(config, "measure")),
        packs=pack_args,
        marker=marker("finish"),
    log:
        f"{P['logs']}/finish/{{shard}}.log",
    resources:
        mem_mb=4000,
        runtime=lambda wildcards: 2 * config["shard_size"] + 5,
    conda:
        ENV
    shell:
        "spine-idc --console-fd 3 shard finish --shard {input.shard} --options {params.options}"
        " {params.packs} --out {params.marker} 3>&2 > {log} 2>&1"
