"""A time and cost model for a cohort on Google Cloud, from measured throughput and your prices.

    .venv/bin/python bench/cost.py --series 126088 --series-per-vm-hour 135 --vm-price 0.02 --vms 500

Wall time = series / (series per VM-hour x VMs) (plus start-up); cost = VM-hours x price per
VM-hour.  Throughput is what `bench/stages.py` (CPU, classical) or the GPU benchmark measures on
the VM type you price; prices are parameters (spot prices change: look them up for your region).
Printed beside IDC's published run of TotalSegmentator on NLST: 126,088 series in under 9 hours
on over 21,000 T4 VMs for $1,011 in total.
"""

from __future__ import annotations

import argparse

IDC_NLST = {"series": 126_088, "hours": 9.0, "vms": 21_000, "dollars": 1_011.0}


def model(series: int, per_vm_hour: float, price: float, vms: int, startup_h: float) -> dict:
    vm_hours = series / per_vm_hour
    wall = vm_hours / vms + startup_h
    dollars = (vm_hours + startup_h * vms) * price
    return {"vm_hours": vm_hours, "wall_h": wall, "dollars": dollars, "per_series": dollars / series}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", type=int, default=IDC_NLST["series"])
    ap.add_argument("--series-per-vm-hour", type=float, required=True,
                    help="measured throughput of one VM (e.g. 135 for the classical backend on 2 vCPUs)")
    ap.add_argument("--vm-price", type=float, required=True, help="price of one VM-hour in dollars (spot)")
    ap.add_argument("--vms", type=int, default=100, help="VMs running at once")
    ap.add_argument("--startup-minutes", type=float, default=5.0, help="per VM: boot, image pull, set-up")
    args = ap.parse_args()
    m = model(args.series, args.series_per_vm_hour, args.vm_price, args.vms, args.startup_minutes / 60)
    idc = IDC_NLST
    print(f"{'':28} {'series':>9} {'VMs':>7} {'wall h':>7} {'VM-hours':>9} {'dollars':>9} {'$/series':>9}")
    print(f"{'this model':28} {args.series:>9} {args.vms:>7} {m['wall_h']:>7.1f} {m['vm_hours']:>9.0f} "
          f"{m['dollars']:>9.0f} {m['per_series']:>9.4f}")
    print(f"{'IDC TotalSegmentator on NLST':28} {idc['series']:>9} {idc['vms']:>7} {idc['hours']:>7.1f} "
          f"{'':>9} {idc['dollars']:>9.0f} {idc['dollars'] / idc['series']:>9.4f}")
    break_even = args.series_per_vm_hour * idc["dollars"] / idc["series"]
    print(f"\nat {args.series_per_vm_hour:g} series per VM-hour, a VM-hour must cost under "
          f"${break_even:.2f} to match IDC's cost per series")


if __name__ == "__main__":
    main()
