# Per-vertebra volume, trabecular HU, centroid and body heights.


rule measure:
    input:
        converted=rules.convert.output[0],
        segmented=rules.segment.output[0],
    output:
        P["measure"],
    params:
        options=section_json(config, "measure"),
    log:
        f"{P['logs']}/measure/{{series}}.log",
    resources:
        mem_mb=4000,
    conda:
        ENV
    shell:
        "spine-idc measure --converted {input.converted} --segmented {input.segmented}"
        " --options {params.options} --out {output} > {log} 2>&1"
