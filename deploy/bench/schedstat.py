#!/usr/bin/env python3
"""Per thread of every `rshard` process: time on a CPU and time runnable but waiting for
one, over an interval, from /proc/<pid>/task/<tid>/schedstat (ns on CPU, ns waiting,
timeslices). Run it beside a benchmark to see whether threads wait for cores.

    deploy/bench/schedstat.py [SECONDS]    # default 4
"""
import os
import sys
import time


def sample():
    totals = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                command = f.read().split(b"\0")
            if not command or not os.path.basename(command[0]).startswith(b"rshard"):
                continue
            role = b" ".join(command[1:3]).decode(errors="replace")
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/comm") as f:
                    name = f.read().strip()
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    on_cpu, waiting, slices = map(int, f.read().split())
                key = (pid, role, name)
                before = totals.get(key, (0, 0, 0))
                totals[key] = (before[0] + on_cpu, before[1] + waiting, before[2] + slices)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return totals


def main():
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 4.0
    first = sample()
    time.sleep(seconds)
    second = sample()
    print(f"{'pid':>7} {'process':<32} {'thread':<16} {'cpu':>6} {'waiting':>8} {'slices/s':>9}")
    for key in sorted(second):
        if key not in first:
            continue
        cpu, waiting, slices = (
            (b - a) / seconds for a, b in zip(first[key], second[key])
        )
        if cpu < 0.01e9:
            continue
        pid, role, name = key
        print(f"{pid:>7} {role[:32]:<32} {name:<16} {cpu / 1e9:>6.2f} {waiting / 1e9:>8.2f} {slices:>9.0f}")


if __name__ == "__main__":
    main()
