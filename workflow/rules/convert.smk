# DICOM -> HU volume with checked geometry. A checkpoint: a series that fails its checks
# ends here with failure.json, and no later stage is requested for it.


checkpoint convert:
    input:
        manifest=rules.manifest.output.manifest,
    output:
        directory(P["convert"]),
    params:
        options=section_json(config, "convert"),
    log:
        f"{P['logs']}/convert/{{series}}.log",
    resources:
        mem_mb=4000,
        runtime=15,
    conda:
        ENV
    shell:
        "spine-idc convert --manifest {input.manifest} --series {wildcards.series}"
        " --options {params.options} --out {output} > {log} 2>&1"
