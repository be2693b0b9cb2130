# Every series in the manifest ends in an outcome: SEG + SR + measurements, or a recorded
# failure. The cohort table gathers them, driven by the manifest rows.


rule outcome:
    input:
        series_products,
    output:
        "work/outcome/{series}.done",
    log:
        f"{P['logs']}/outcome/{{series}}.log",
    localrule: True
    conda:
        ENV
    shell:
        # The marker lists what the series ended with: its products, or its failure record.
        "printf '%s\\n' {input} > {output} 2> {log}"


rule cohort:
    input:
        manifest=rules.manifest.output.manifest,
        outcomes=all_series_outcomes,
    output:
        parquet=P["cohort_parquet"],
        csv=P["cohort_csv"],
        failures=P["failures"],
    log:
        f"{P['logs']}/cohort.log",
    conda:
        ENV
    shell:
        "spine-idc cohort --manifest {input.manifest} --parquet {output.parquet}"
        " --csv {output.csv} --failures {output.failures} > {log} 2>&1"
