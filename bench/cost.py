"""A time and cost model for a cohort on Google Cloud, from measured throughput and your prices.

    .venv/bin/python bench/cost.py --series 126088 --series-per-vm-hour 135 --vm-price 0.02 --vms 500

Wall time = series / (series per VM-hour x VMs) (plus start-up); cost = VM-hours x price per
VM-hour.  Throughput is what `bench/stages.py` (CPU, classical) or the GPU benchmark measures on
the VM type you price; prices are parameters (spot prices change: look them up for your region).
Printed beside IDC's published run of TotalSegmentator on NLST: 126,088 series in under 9 hours
on over 21,000 T4 VMs for $1,011 in total.

With a GPU backend, ``segment`` runs on GPU VMs and the other stages on CPU VMs, both at once
over different shards: give the CPU VMs' throughput for the other stages and the GPU VMs' own
(``--gpu-series-per-hour``, ``--gpu-vm-price``, ``--gpu-vms``).  Wall time is then the slower
of the two fleets; the cost is the sum.

    .venv/bin/python bench/cost.py --series-per-vm-hour 318 --vm-price 0.02 --vms 500 \
        --gpu-series-per-hour 600 --gpu-vm-price 0.30 --gpu-vms 50
"""

from __future__ import annotations

import argparse

IDC_NLST = {"series": 126_088, "hours": 9.0, "vms": 21_000, "dollars": 1_011.0}


def model(series: int, per_vm_hour: float, price: float, vms: int, startup_h: float) -> dict:
    vm_hours = series / per_vm_hour
    wall = vm_hours / vms + startup_h
    dollars = (vm_hours + startup_h * vms) * price
    return {"vm_hours": vm_hours, "wall_h": wall, "dollars": dollars, "per_series": dollars / series}


def with_gpu(series: int, cpu: dict, gpu_per_hour: float, gpu_price: float, gpus: int,
             startup_h: float) -> dict:
    """``cpu`` (from :func:`model`, the stages other than segment) plus the GPU fleet."""
    g = model(series, gpu_per_hour, gpu_price, gpus, startup_h)
    dollars = cpu["dollars"] + g["dollars"]
    return {"vm_hours": cpu["vm_hours"] + g["vm_hours"], "gpu_hours": g["vm_hours"],
            "wall_h": max(cpu["wall_h"], g["wall_h"]), "dollars": dollars, "per_series": dollars / series}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", type=int, default=IDC_NLST["series"])
    ap.add_argument("--series-per-vm-hour", type=float, required=True,
                    help="measured throughput of one VM (e.g. 135 for the classical backend on 2 vCPUs)")
    ap.add_argument("--vm-price", type=float, required=True, help="price of one VM-hour in dollars (spot)")
    ap.add_argument("--vms", type=int, default=100, help="VMs running at once")
    ap.add_argument("--startup-minutes", type=float, default=5.0, help="per VM: boot, image pull, set-up")
    ap.add_argument("--gpu-series-per-hour", type=float, default=None,
                    help="segment on GPU VMs: series per GPU-VM hour (bench/infer.py on that VM type); "
                         "--series-per-vm-hour is then the CPU VMs' rate for the other stages")
    ap.add_argument("--gpu-vm-price", type=float, default=None, help="price of one GPU VM-hour (spot)")
    ap.add_argument("--gpu-vms", type=int, default=10, help="GPU VMs running at once")
    args = ap.parse_args()
    m = model(args.series, args.series_per_vm_hour, args.vm_price, args.vms, args.startup_minutes / 60)
    if args.gpu_series_per_hour is not None:
        if args.gpu_vm_price is None:
            ap.error("--gpu-series-per-hour needs --gpu-vm-price")
        m = with_gpu(args.series, m, args.gpu_series_per_hour, args.gpu_vm_price, args.gpu_vms,
                     args.startup_minutes / 60)
        print(f"segment on {args.gpu_vms} GPU VMs: {m['gpu_hours']:.0f} GPU VM-hours; "
              f"the other stages on {args.vms} CPU VMs")
    idc = IDC_NLST
    print(f"{'':28} {'series':>9} {'VMs':>7} {'wall h':>7} {'VM-hours':>9} {'dollars':>9} {'$/series':>9}")
    vms = f"{args.vms}+{args.gpu_vms}" if args.gpu_series_per_hour is not None else str(args.vms)
    print(f"{'this model':28} {args.series:>9} {vms:>7} {m['wall_h']:>7.1f} {m['vm_hours']:>9.0f} "
          f"{m['dollars']:>9.0f} {m['per_series']:>9.4f}")
    print(f"{'IDC TotalSegmentator on NLST':28} {idc['series']:>9} {idc['vms']:>7} {idc['hours']:>7.1f} "
          f"{'':>9} {idc['dollars']:>9.0f} {idc['dollars'] / idc['series']:>9.4f}")
    if args.gpu_series_per_hour is None:
        break_even = args.series_per_vm_hour * idc["dollars"] / idc["series"]
        print(f"\nat {args.series_per_vm_hour:g} series per VM-hour, a VM-hour must cost under "
              f"${break_even:.2f} to match IDC's cost per series")


if __name__ == "__main__":
    main()
