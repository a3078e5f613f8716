"""Minibatch samplers with their own random generator, resumable through ``state_dict``.

Each sampler draws index sets ``B ⊂ {0, …, n−1}`` of a fixed size so that the minibatch mean of
per-sample losses is an unbiased estimate of the full mean:

- ``"shuffle"`` (epoch shuffling): a fresh random permutation each epoch, cut into consecutive
  batches; every sample is seen once per epoch. A batch that would straddle two epochs is
  completed from the next permutation, so every batch has ``batch_size`` indices.
- ``"without_replacement"``: every batch is an independent uniform draw of ``batch_size``
  distinct indices.
- ``"replacement"``: ``batch_size`` i.i.d. uniform indices.

A sampler owns a ``torch.Generator`` (CPU, seeded at construction) that nothing else draws
from, so the inner and outer samplers of a method are independent streams, and its
``state_dict`` (generator state, current permutation, position) restores the exact sequence.
Indices are returned on ``device`` as int64.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

MODES = ("shuffle", "without_replacement", "replacement")


class MinibatchSampler:
    """Draw minibatches of ``batch_size`` indices out of ``n``.

    Args:
        n: number of samples (> 0).
        batch_size: indices per batch, ``1 ≤ batch_size ≤ n`` (``≤ n`` is not required for
            ``"replacement"``).
        mode: one of ``MODES``.
        seed: seed of the sampler's own generator.
        device: where the index tensors are put.

    Raises:
        ValueError: on an invalid ``n``, ``batch_size`` or ``mode``.
    """

    def __init__(self, n: int, batch_size: int, *, mode: str = "shuffle", seed: int = 0,
                 device: torch.device | str = "cpu"):
        if n <= 0:
            raise ValueError(
                f"cannot sample minibatches out of n={n} samples: the problem has no sample "
                "structure (set n_inner / n_outer in the BilevelProblem) or use batch_size=None"
            )
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if batch_size < 1 or (mode != "replacement" and batch_size > n):
            raise ValueError(
                f"batch_size must be in [1, n={n}] for mode={mode!r}, got {batch_size}"
            )
        self.n, self.batch_size, self.mode = n, batch_size, mode
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)
        self.permutation = torch.randperm(n, generator=self.generator) if mode == "shuffle" \
            else torch.empty(0, dtype=torch.int64)
        self.position = 0

    def __call__(self) -> Tensor:
        """The next minibatch (a 1-D int64 tensor of ``batch_size`` indices)."""
        if self.mode == "replacement":
            idx = torch.randint(self.n, (self.batch_size,), generator=self.generator)
        elif self.mode == "without_replacement":
            idx = torch.randperm(self.n, generator=self.generator)[: self.batch_size]
        else:
            idx = self._next_slice()
        return idx.to(self.device)

    def _next_slice(self) -> Tensor:
        parts, need = [], self.batch_size
        while need:
            if self.position == self.n:
                self.permutation = torch.randperm(self.n, generator=self.generator)
                self.position = 0
            take = min(need, self.n - self.position)
            parts.append(self.permutation[self.position: self.position + take])
            self.position += take
            need -= take
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the same sequence of batches."""
        return {"generator": self.generator.get_state(), "permutation": self.permutation.clone(),
                "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` (made by a sampler with the same ``n``, size, mode)."""
        self.generator.set_state(state["generator"])
        self.permutation = state["permutation"].clone().cpu()
        self.position = int(state["position"])


def stream_seed(seed: int, stream: int) -> int:
    """A seed for stream ``stream`` (0: inner, 1: outer, …) of a method seeded with ``seed``,
    so that the streams of one method, and of different seeds, do not coincide."""
    return (seed * 1_000_003 + 7919 * (stream + 1)) % (2**63 - 1)
