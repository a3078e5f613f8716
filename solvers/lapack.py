"""A guard for a wrong-result bug of batched LU on the CPU.

Seen on this project's machines (torch 2.13 CPU wheel, oneMKL): ``torch.linalg.solve_ex`` /
``lu_factor_ex`` on a *batch* of matrices of size ≳ 150 with more than one torch thread returns
wrong pivots ("Intel oneMKL ERROR … DLASWP" on stderr, sometimes a hang), i.e. silently wrong
solutions; one thread, or a batch of one, is correct. :func:`lu_safe` runs the block
single-threaded when that combination can occur.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor


@contextmanager
def lu_safe(matrix: Tensor) -> Iterator[None]:
    """Run the block with one torch thread if ``matrix`` is a CPU batch of several matrices."""
    threads = torch.get_num_threads()
    risky = (matrix.device.type == "cpu" and matrix.ndim > 2 and threads > 1
             and matrix.shape[:-2].numel() > 1)
    if risky:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if risky:
            torch.set_num_threads(threads)
