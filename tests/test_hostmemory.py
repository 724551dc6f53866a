"""``import xelm`` keeps XLA:CPU's per-run temporaries mapped: a compiled program's later runs
do not fault its temporary block back in (and do with ``XELM_MALLOC=system``)."""

import json
import os
import subprocess
import sys

import pytest

# A program whose only big buffer is a 64 MB temporary (the [4096, 4096] product), larger than any
# block glibc would keep by default; the page faults of its third run are what is printed.
PROBE = """
import resource, json
import xelm
import jax, jax.numpy as jnp
f = jax.jit(lambda x: (x @ x.T).max())
x = jnp.ones((4096, 16), jnp.float32)
for _ in range(2):
    f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
f(x).block_until_ready()
print(json.dumps({"kept": xelm.HOST_MEMORY_KEPT,
                  "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""
TEMP_PAGES = 4096 * 4096 * 4 // 4096


def _probe(**env) -> dict:
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator only")
def test_import_xelm_keeps_a_programs_temporaries_mapped_between_runs():
    kept = _probe(XELM_MALLOC="keep")
    system = _probe(XELM_MALLOC="system")
    assert kept["kept"] is True and system["kept"] is False
    assert system["faults"] > TEMP_PAGES // 2, system  # the probe does measure the refaulting
    assert kept["faults"] < TEMP_PAGES // 10, kept
