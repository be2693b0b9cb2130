# Where the series come from: an IDC cohort query, a DICOMweb server, synthetic phantoms or a
# local folder. The manifest is the one checkpoint: it cuts the cohort into shards of
# `shard_size` series, and every later stage runs one job per shard. A re-selected cohort re-runs
# the shard jobs, which skip every series whose stamped result is current (spine_idc.pipeline.shards) on
# a shared filesystem; without one a job starts from its inputs' packs alone and redoes its
# whole shard (spine_idc.pipeline.packs).


rule phantoms:
    output:
        directory(P["phantoms"]),
    params:
        options=literal(section_json(config, "phantom")),
    log:
        f"{P['logs']}/phantoms.log",
    localrule: True
    conda:
        ENV
    shell:
        "spine-idc --console-fd 3 phantoms --options {params.options} --out {output} 3>&2 > {log} 2>&1"


checkpoint manifest:
    input:
        unpack(manifest_input),
    output:
        manifest=P["manifest"],
        file_lists=directory(P["file_lists"]),
        shards=directory(P["shards"]),
    params:
        # Only what defines the cohort, so that other settings do not re-select it.
        config=literal(cohort_config_json(config)),
        folder=folder_arg,
    log:
        f"{P['logs']}/manifest.log",
    localrule: True
    conda:
        ENV
    shell:
        # The log is also shown, so an offline `make run` says why it stopped.
        "spine-idc manifest --config-json {params.config} {params.folder}"
        " --out {output.manifest} --file-lists {output.file_lists} --shards {output.shards}"
        " 2>&1 | tee {log}"


rule download:
    input:
        shard=P["shard"],
    output:
        **shard_outputs("download"),
    params:
        options=literal(remote_config_json(config)),
        packs=pack_args,
        marker=marker("download"),
    retries: config["download"]["retries"]
    log:
        f"{P['logs']}/download/{{shard}}.log",
    resources:
        mem_mb=2000,
        runtime=lambda wildcards, attempt: 30 + 30 * attempt,
        # The attempt number reaches the job this way; its last attempt records failures.
        download_attempt=lambda wildcards, attempt: attempt,
    conda:
        ENV
    shell:
        "spine-idc --console-fd 3 shard download --shard {input.shard} --options {params.options}"
        " --attempt {resources.download_attempt} {params.packs} --out {params.marker} 3>&2 >> {log} 2>&1"
