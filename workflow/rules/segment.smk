# Vertebra segmentation (backend chosen by segment.backend). A checkpoint: a volume without a
# usable spine ends here with failure.json.


checkpoint segment:
    input:
        converted=rules.convert.output[0],
    output:
        directory(P["segment"]),
    params:
        options=section_json(config, "segment"),
    log:
        f"{P['logs']}/segment/{{series}}.log",
    resources:
        mem_mb=8000,
        runtime=30,
    conda:
        ENV
    shell:
        "spine-idc segment --converted {input.converted} --series {wildcards.series}"
        " --options {params.options} --out {output} > {log} 2>&1"
