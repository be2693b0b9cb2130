# DICOM Segmentation and TID 1500 Structured Report, referencing the source series.


rule seg:
    input:
        converted=rules.convert.output[0],
        segmented=rules.segment.output[0],
    output:
        P["seg"],
    log:
        f"{P['logs']}/seg/{{series}}.log",
    resources:
        mem_mb=4000,
    conda:
        ENV
    shell:
        "spine-idc seg --converted {input.converted} --segmented {input.segmented}"
        " --out {output} > {log} 2>&1"


rule sr:
    input:
        converted=rules.convert.output[0],
        measurements=rules.measure.output[0],
        seg=rules.seg.output[0],
    output:
        P["sr"],
    log:
        f"{P['logs']}/sr/{{series}}.log",
    conda:
        ENV
    shell:
        "spine-idc sr --converted {input.converted} --measurements {input.measurements}"
        " --seg {input.seg} --out {output} > {log} 2>&1"
