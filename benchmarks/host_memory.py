"""The train step with XLA:CPU's temporaries kept mapped between steps (what ``import xelm`` sets up,
``xelm/hostmemory.py``) against glibc's defaults (``XELM_MALLOC=system``). The setting is fixed
when a process starts its threads, so each measurement is a fresh process: rounds alternate the
two, each process warms up until its heap has settled, then times its steps and counts page
faults. ``--side torch`` times HF ModernBERT (PyTorch) the same way: the allocator is the
process's, so the setting serves it too.

    python benchmarks/host_memory.py --rounds 4
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
from train_throughput import add_shape_args, shape_config, torch_step, xelm_step

import xelm


def measure(a) -> dict:
    """In the child, after warm-up: tokens/s; page faults, user and kernel CPU time per step (summed
    over threads: less noisy than wall time on a shared host); resident memory."""
    cfg = shape_config(a)
    step = (xelm_step if a.side == "xelm" else torch_step)(cfg, a.batch, a.seq, a.mask_ratio)
    step(a.warmup)
    before, t = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    step(a.steps)
    dt, after = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF)
    with open("/proc/self/statm") as f:
        rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return {"kept": xelm.HOST_MEMORY_KEPT, "tokens_per_s": a.steps * a.batch * a.seq / dt,
            "faults_per_step": (after.ru_minflt - before.ru_minflt) / a.steps,
            "user_ms_per_step": (after.ru_utime - before.ru_utime) / a.steps * 1e3,
            "sys_ms_per_step": (after.ru_stime - before.ru_stime) / a.steps * 1e3,
            "rss_mb": rss / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shape_args(ap)
    ap.add_argument("--side", default="xelm", choices=["xelm", "torch"])
    ap.add_argument("--warmup", type=int, default=8, help="steps before timing: the heap settles")
    ap.add_argument("--steps", type=int, default=8, help="timed steps per process")
    ap.add_argument("--rounds", type=int, default=4, help="pairs of processes, the order alternating")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(measure(a)))
        return
    settings = {"kept": "keep", "system": "system"}
    results: dict[str, list[dict]] = {s: [] for s in settings}
    print(f"{a.side}: {'round':>5} {'setting':>8} {'tokens/s':>10} {'faults/step':>12} {'user ms':>8} "
          f"{'sys ms':>7} {'RSS MB':>8}")
    for r in range(a.rounds):
        for name in (list(settings) if r % 2 == 0 else list(settings)[::-1]):
            proc = subprocess.run([sys.executable, __file__, "--child", *sys.argv[1:]], text=True,
                                  capture_output=True, env={**os.environ, "XELM_MALLOC": settings[name]})
            if proc.returncode:
                raise SystemExit(proc.stderr[-2000:])
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            if res["kept"] != (name == "kept"):  # not glibc: both processes would run one setting
                raise SystemExit("the allocator setting did not take in the child (glibc only)")
            results[name].append(res)
            print(f"{'':{len(a.side) + 2}}{r:>5} {name:>8} {res['tokens_per_s']:>10,.0f} "
                  f"{res['faults_per_step']:>12,.0f} {res['user_ms_per_step']:>8,.0f} {res['sys_ms_per_step']:>7,.0f} "
                  f"{res['rss_mb']:>8,.0f}", flush=True)
    med = {n: float(np.median([x["tokens_per_s"] for x in results[n]])) for n in settings}
    per_round = " ".join(f"{k['tokens_per_s'] / s['tokens_per_s']:.2f}"
                         for k, s in zip(results["kept"], results["system"]))
    print(f"\nmedian tokens/s: kept {med['kept']:,.0f}, system {med['system']:,.0f}, "
          f"kept/system {med['kept'] / med['system']:.2f} (per round {per_round})")


if __name__ == "__main__":
    main()
