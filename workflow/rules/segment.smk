# Vertebra segmentation (backend chosen by segment.backend). The one checkpoint per series:
# its folder holds the label maps, or failure.json (a failed conversion passed on, or a volume
# without a usable spine), and decides what else the series must produce.


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
