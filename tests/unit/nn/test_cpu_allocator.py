"""keep_freed_memory: freed tensor memory is reused, so new temporaries stop faulting pages in."""

from __future__ import annotations

import platform
import resource

import pytest
import torch

from mamlpp.nn.cpu_allocator import keep_freed_memory


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)
def test_freed_blocks_are_reused_without_page_faults() -> None:
    assert keep_freed_memory()
    assert keep_freed_memory()  # idempotent
    n = 8 * 2**20 // 4  # 8 MB, the size of a first-stage Conv4 activation at batch 8
    for _ in range(3):  # let the heap grow to its working size
        torch.ones(n).sum()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        torch.ones(n).sum()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    # Served by mmap each time, every block would fault its 2048 pages in again.
    assert faults < 2048, faults
