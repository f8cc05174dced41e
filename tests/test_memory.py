"""cifarlab.memory: glibc keeps freed memory unless CIFARLAB_MALLOC=system says not to."""

import os
import platform
import subprocess
import sys

import pytest

CHILD = """
import resource
from cifarlab.memory import keep_freed_memory
on = keep_freed_memory()
import torch
torch.set_num_threads(1)
x, k = torch.randn(8, 64, 128, 128), torch.randn(64, 64, 3, 3)
def step():  # a training step's pattern: tensors above glibc's 32 MiB mmap limit, freed again
    y = torch.nn.functional.conv2d(x, k, padding=1)  # 33.5 MB
    (y * 2).relu_()
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
r = resource.getrusage(resource.RUSAGE_SELF)
print(on, r.ru_minflt - before, r.ru_maxrss // 1024)
"""


def run_child(**env) -> tuple[bool, int, int]:
    e = {k: v for k, v in os.environ.items() if k != "CIFARLAB_MALLOC"} | env
    out = subprocess.run([sys.executable, "-c", CHILD], env=e, capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0] == "True", int(out[1]), int(out[2])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_freed_memory_is_kept_and_reused():
    on, faults, rss = run_child()
    off, faults_off, rss_off = run_child(CIFARLAB_MALLOC="system")
    assert on and not off
    # glibc's defaults mmap each 33.5 MB block afresh: ~8k page faults per block, 2 a step
    assert faults_off > 20 * 2 * 8_000
    assert faults < faults_off / 10
    assert rss < rss_off + 100  # MiB: the kept memory is reused, not grown step after step
