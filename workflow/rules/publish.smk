# STOW-RS of each series' SEG and SR to a DICOMweb store (publish.to: dicomweb). Idempotent:
# instances already in the store are left alone, so a re-run never duplicates them. The record
# (store, viewer URL, per-instance status, or the failure) feeds the cohort table.


rule publish:
    input:
        converted=rules.convert.output[0],
        seg=rules.seg.output[0],
        sr=rules.sr.output[0],
    output:
        P["publish"],
    params:
        options=section_json(config, "publish"),
    retries: config["publish"]["retries"]
    log:
        f"{P['logs']}/publish/{{series}}.log",
    resources:
        mem_mb=2000,
        # The attempt number reaches the job this way; its last attempt records a failure.
        publish_attempt=lambda wildcards, attempt: attempt,
    conda:
        ENV
    shell:
        "spine-idc publish --converted {input.converted} --seg {input.seg} --sr {input.sr}"
        " --series {wildcards.series} --options {params.options}"
        " --attempt {resources.publish_attempt} --out {output} >> {log} 2>&1"
