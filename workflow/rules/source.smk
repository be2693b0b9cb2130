# Where the series come from: synthetic phantoms or a local folder. The manifest is a
# checkpoint: everything downstream fans out over its rows.


rule phantoms:
    output:
        directory(P["phantoms"]),
    params:
        options=section_json(config, "phantom"),
    log:
        f"{P['logs']}/phantoms.log",
    conda:
        ENV
    shell:
        "spine-idc phantoms --options {params.options} --out {output} > {log} 2>&1"


checkpoint manifest:
    input:
        folder=P["phantoms"] if config["source"] == "phantom" else config["input_dir"],
    output:
        manifest=P["manifest"],
        file_lists=directory(P["file_lists"]),
    params:
        source=config["source"],
    log:
        f"{P['logs']}/manifest.log",
    conda:
        ENV
    shell:
        "spine-idc manifest --source {params.source} --input-dir {input.folder:q}"
        " --out {output.manifest} --file-lists {output.file_lists} > {log} 2>&1"
