# Every series in the manifest ends in its products (measurements, SEG, SR) or a recorded
# failure; the cohort table gathers them, driven by the manifest rows, once every shard is done.


rule cohort:
    input:
        unpack(cohort_packs),
        manifest=rules.manifest.output.manifest,
        shards=all_shards_done,
    output:
        parquet=P["cohort_parquet"],
        csv=P["cohort_csv"],
        failures=P["failures"],
    params:
        packs=cohort_pack_args,
    log:
        f"{P['logs']}/cohort.log",
    localrule: True
    conda:
        ENV
    shell:
        "spine-idc cohort --manifest {input.manifest} --parquet {output.parquet}"
        # The summary (series done, failed by reason, where the tables are) is also shown.
        " --csv {output.csv} --failures {output.failures} {params.packs} 2>&1 | tee {log}"


# fail_on_series_errors: true: the run fails when any series failed. A step of its own after the
# cohort, so that the tables are written and kept (Snakemake removes a failed job's outputs);
# its marker is only written when no series failed, so every later run says it again.
rule check_failures:
    input:
        manifest=rules.manifest.output.manifest,
        failures=rules.cohort.output.failures,
    output:
        P["no_series_errors"],
    log:
        f"{P['logs']}/check_failures.log",
    localrule: True
    conda:
        ENV
    shell:
        "spine-idc check-failures --manifest {input.manifest} --failures {input.failures}"
        " --out {output} 2>&1 | tee {log}"
