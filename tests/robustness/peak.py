"""Runs a snippet in a fresh Python process and reports its peak resident memory.

The snippet finds `peak_mb()` defined (VmHWM of /proc/self/status: the peak resident set of
the process's own address space; not ru_maxrss, which Linux carries over fork and exec, so a
child of a large pytest process would report the parent's peak) and prints one json line
last; `run` returns it as a dict.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PEAK_MB = r'''
def peak_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError("no VmHWM in /proc/self/status")
'''


def run(code: str, *args: str, timeout: float = 600) -> dict:
    """Runs `code` (with `peak_mb` defined, `sys.argv[1:]` = args) in a fresh interpreter
    whose working folder is the repository; returns its last stdout line as json."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", PEAK_MB + code, *args], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"\n{args}: {result}")
    return result
