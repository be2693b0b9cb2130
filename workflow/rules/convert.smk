# DICOM -> HU volume with checked geometry. A series that fails its checks (or whose download
# failed) gets failure.json here instead of a volume; the segment checkpoint passes it on, and
# nothing later runs for it.


rule convert:
    input:
        unpack(convert_input),
    output:
        directory(P["convert"]),
    params:
        options=section_json(config, "convert"),
        downloaded=lambda wildcards, input: (
            f"--downloaded {input.downloaded}" if "downloaded" in input.keys() else ""
        ),
    log:
        f"{P['logs']}/convert/{{series}}.log",
    resources:
        mem_mb=4000,
        runtime=15,
    conda:
        ENV
    shell:
        "spine-idc convert --manifest {input.manifest} --series {wildcards.series}"
        " --options {params.options} {params.downloaded} --out {output} > {log} 2>&1"
