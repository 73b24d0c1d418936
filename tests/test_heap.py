"""loopscale.training.heap: freed memory stays in the heap, so repeated large allocations stop faulting."""

import subprocess
import sys
import textwrap

import pytest

PROBE = textwrap.dedent("""
    import resource, sys
    import torch
    from loopscale.training import heap
    torch.set_num_threads(1)
    took = heap.keep_freed_memory() if sys.argv[1] == "keep" else None
    def step():  # a training step's pattern: large activations allocated, used, freed
        for _ in range(8):
            a = torch.ones(1 << 20)  # 4 MiB, above glibc's mmap threshold
            (a * 2).sum()
    step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        step()
    print(took, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def _faults(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True).stdout.split()
    return out[0], int(out[1])


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_keep_freed_memory_stops_page_faults_of_repeated_large_allocations():
    took, kept = _faults("keep")
    _, default = _faults("default")
    assert took == "True"
    # 20 steps × 16 tensors of 4 MiB: ~1,000 pages each when every allocation is a fresh mapping
    assert default > 10_000, f"the default heap faulted only {default} pages: the probe no longer measures anything"
    # kept: a few 4 MiB chunks may still fault in as the heap grows (0-2,048 seen), never every allocation
    assert kept < default / 5, f"kept heap: {kept} faults against {default} by default"
