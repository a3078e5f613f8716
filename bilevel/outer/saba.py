"""SABA (Dagréou, Ablin, Vaiter, Moreau 2022): SOBA with SAGA-style variance reduction.

SOBA's directions are sums of per-sample terms (``∇_y g_i``, ``∇²_yy g_i v``, ``∇²_θy g_i v``
over inner samples, ``∇_y f_j``, ``∇_θ f_j`` over outer samples). SABA keeps in memory the last
value ``m_b`` of each term for every block ``b`` of a fixed random partition of the samples into
``⌈n / batch_size⌉`` blocks (``batch_size=1``: one memory slot per sample, the paper's
setting), draws one inner and one outer block per step, and replaces each term ``t_b`` by the
SAGA estimate

    t̂ = w_b (t_b − m_b) + Σ_c (|c| / n) m_c,     w_b = n_blocks · |b| / n,

then stores ``m_b ← t_b``. ``E[t̂]`` is the full-data term whatever the memory holds
(``w_b`` corrects blocks of unequal size), and its variance vanishes as the iterates
converge, so constant steps converge (no decreasing schedule needed). The memory starts at
zero (the first visit of a block is an SGD step), so initialisation costs nothing.

Updates, with the estimates ``D̂``: ``y ← y − ρ D̂_y``, ``v ← v − ρ D̂_v``,
``θ ← Π_box(θ − γ D̂_θ)`` (``D_v = ∇²_yy g v − ∇_y f``, ``D_θ = ∇_θ f − ∇²_θy g v``).
Memory: ``n_blocks_inner × (2 dim y + dim θ) + n_blocks_outer × (dim y + dim θ)`` numbers.
State (``extra``): per side (``inner``/``outer``) the partition (``*_permutation``,
``*_bounds``), the block sampler, the memory tables and their weighted averages.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from bilevel.outer.base import BilevelProblem, OuterState
from bilevel.outer.oracles import inner_oracle, outer_oracle
from bilevel.outer.sampling import MinibatchSampler, stream_seed
from bilevel.outer.stochastic import INNER_STREAM, OUTER_STREAM, StochasticMethod

_TERMS = {"inner": ("grad_y", "hvp", "cross"), "outer": ("grad_y", "grad_theta")}


@dataclass
class SABA(StochasticMethod):
    """SABA: see the module docstring. ``batch_size`` / ``outer_batch_size`` are the block
    sizes (``None``: one block, i.e. full batch); block ids are drawn by ``sampling``
    (``"without_replacement"`` means ``"shuffle"`` for single-block draws)."""

    name: str = "saba"

    def init_samplers(self, problem: BilevelProblem, extra: dict[str, Any],
                      device: torch.device) -> None:
        mode = "shuffle" if self.sampling == "without_replacement" else self.sampling
        for side, n, size, stream in (("inner", problem.n_inner, self.batch_size, INNER_STREAM),
                                      ("outer", problem.n_outer, self.outer_batch_size,
                                       OUTER_STREAM)):
            if size is None:
                continue
            if n <= 0:
                raise ValueError(
                    f"SABA with a {side} block size needs problem.n_{side} > 0 (the number of "
                    f"{side} samples), got {n}; or set the block size to None (full batch)"
                )
            seed = stream_seed(self.seed, stream)
            n_blocks = math.ceil(n / min(size, n))
            sizes = [n // n_blocks + (b < n % n_blocks) for b in range(n_blocks)]
            extra[f"{side}_permutation"] = torch.randperm(
                n, generator=torch.Generator().manual_seed(seed)).to(device)
            extra[f"{side}_bounds"] = torch.tensor([0, *sizes]).cumsum(0)
            if n_blocks > 1:
                extra[f"{side}_block_sampler"] = MinibatchSampler(n_blocks, 1, mode=mode,
                                                                  seed=seed + 1)

    def init_extra(self, problem: BilevelProblem, state: OuterState) -> None:
        for side, terms in _TERMS.items():
            bounds = state.extra.get(f"{side}_bounds")
            n_blocks = 1 if bounds is None else len(bounds) - 1
            for term in terms:
                like = state.theta if term in ("cross", "grad_theta") else state.y
                state.extra[f"{side}_memory_{term}"] = like.new_zeros((n_blocks, *like.shape))
                state.extra[f"{side}_average_{term}"] = torch.zeros_like(like)

    def curvature_batch(self, state: OuterState) -> Tensor | None:
        return _draw(state, "inner")[1]

    def step(self, problem: BilevelProblem, state: OuterState) -> dict[str, Any]:
        self.refresh_curvature(problem, state)
        g, f = problem.inner_loss, problem.outer_loss
        y, v, theta = state.y, state.extra["v"], state.theta
        b_in, idx_in, w_in = _draw(state, "inner")
        b_out, idx_out, w_out = _draw(state, "outer")
        inner = inner_oracle(g, y, theta, idx_in, v)
        outer = outer_oracle(f, y, theta, idx_out)
        est = {f"inner_{t}": _saga(state, "inner", t, b_in, w_in, getattr(inner, t))
               for t in _TERMS["inner"]}
        est.update({f"outer_{t}": _saga(state, "outer", t, b_out, w_out, getattr(outer, t))
                    for t in _TERMS["outer"]})
        d_theta = est["outer_grad_theta"] - est["inner_cross"]
        row = self.row(state, outer.value, d_theta)
        rho = self.inner_step(state)
        state.y = y - rho * est["inner_grad_y"]
        state.extra["v"] = v - rho * (est["inner_hvp"] - est["outer_grad_y"])
        self.update_theta(problem, state, d_theta)
        state.step += 1
        return row


def _draw(state: OuterState, side: str) -> tuple[int, Tensor | None, float]:
    """A block id, its sample indices (``None``: all samples, a single block) and its share
    ``|b| / n`` of the samples."""
    sampler = state.extra.get(f"{side}_block_sampler")
    if sampler is None:
        return 0, None, 1.0
    bounds, perm = state.extra[f"{side}_bounds"], state.extra[f"{side}_permutation"]
    b = int(sampler()[0])
    lo, hi = int(bounds[b]), int(bounds[b + 1])
    return b, perm[lo:hi], (hi - lo) / len(perm)


def _saga(state: OuterState, side: str, term: str, b: int, share: float, new: Tensor) -> Tensor:
    """``w_b (new − m_b) + Σ_c (|c|/n) m_c`` with ``w_b = n_blocks · share``; then
    ``m_b ← new`` and the weighted average updated in O(dim)."""
    memory = state.extra[f"{side}_memory_{term}"]
    average = state.extra[f"{side}_average_{term}"]
    delta = new - memory[b]
    estimate = (memory.shape[0] * share) * delta + average
    state.extra[f"{side}_average_{term}"] = average + share * delta
    memory[b] = new
    return estimate
