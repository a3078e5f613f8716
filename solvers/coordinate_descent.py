"""Coordinate descent on the quadratic model of the working-set solver, compiled for the CPU.

The model, on ``k`` features (a working set), with ``G`` positive semidefinite:

    min_v  ½ vᵀGv − bᵀv + Σ_j λ₁ⱼ|v_j| + (λ₂ⱼ/2) v_j²     [+ ι(v ≥ 0) if nonneg]

Cyclic coordinate descent keeps the gradient ``q = Gv − b`` up to date (one row of ``G`` per
coordinate that moves) and updates

    v_j ← S(G_jj v_j − q_j, λ₁ⱼ) / (G_jj + λ₂ⱼ)

(``S`` the soft threshold; ``max(·, 0)`` instead when nonneg). It finds most of the support
and signs in a few epochs, then converges only linearly, slowly when the model is
ill-conditioned (a working set larger than the number of samples makes ``G`` singular): the
last few coordinates near their threshold take hundreds of epochs. Two accelerations:

- every ``ANDERSON`` epochs, Anderson extrapolation of the last epochs' iterates, kept when it
  lowers the objective (as in skglm);
- at the start (a warm start is often solved there) and every ``CHECK`` epochs, up to
  ``ROUNDS`` primal-dual active-set rounds from the current iterate: the signs a coordinate
  step would give each coordinate (``sign S(G_jj x_j − q_j, λ₁ⱼ)``) fix a support ``S`` and
  its signs, the exact solve on it,
  ``(G_SS + diag λ₂_S) x_S = b_S − λ₁_S sign_S`` by Cholesky, is the next ``x``; it ends the
  solve when it meets the KKT conditions, and CD goes on from its own iterate otherwise.

Both stop on the model's KKT conditions (the largest distance of ``−q`` to the
subdifferential, coordinate-wise, as ``penalty.violation`` measures it) ``≤ tol``.

Working sets too large for their Gram matrix (least squares) take the same coordinate steps
on the columns themselves (:func:`_coordinate_descent_columns`: ``F'(X_W v)`` kept up to date,
``2nk`` flops an epoch), with neither acceleration (each would cost passes over ``X_W`` of its
own).

For least squares, ``F(z) = c‖z − y‖²/2`` (``datafits.Quadratic``, ``c = 1/n``), the whole
loop of the working-set solver runs here too, in one compiled call
(:func:`solve_least_squares`), step for step as ``WorkingSet.run`` (``solvers.workingset``):

1. ``∇f(w) = c Xᵀ(Xw − y)`` and the KKT violation of every feature; stop at ``≤ tol``;
2. the working set: the support and the most violating features, ``max(ws_start, 2|S|)`` in all;
3. its Gram matrix ``c X_WᵀX_W``, grown in the solver's Gram cache by the new columns only
   (the cache's buffers go in as arrays and come back, grown if they were full), and the model
   (``b = c X_Wᵀy``) solved by the kernel above; a working set past ``gram_max`` features by
   coordinate descent on its columns.

Why the loop too: on problems of a few hundred samples a working set is a few hundred
microseconds of arithmetic, and the torch loop spent 1–2 ms a working set on dispatch, small
allocations and wake-ups of the intra-op thread pool (n = 100–200, p = 500–1000, 2 threads).
Other datafits keep the torch loop, with :func:`solve_quadratic` for their models. The loop
lives in this file because numba's on-disk cache tracks the file of each cached function only:
a kernel imported from another file could change without the loop's cache noticing.

Why compiled: at these sizes (``k`` of a few hundred) a coordinate step is a few hundred flops,
and an epoch in torch would be ``k`` dispatches of microseconds each; an accelerated first-order
method instead (FISTA, torch) needs hundreds of iterations on such ill-conditioned models.
numba (a dependency, as in skglm) compiles the loops on first use and caches them on disk;
``solvers.workingset`` imports this module on its first CPU solve (numba's import takes
about a second). On a GPU, or for a penalty that does not give its separable form, the
working-set solver keeps its torch sub-solver.
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np
import torch
from torch import Tensor

from solvers.penalties import SupportSolve

CHECK = 10  # epochs between active-set tries
ROUNDS = 3  # active-set rounds per try
ANDERSON = 5  # epochs between Anderson extrapolations (of that many last epochs)
NOT_FINITE = -1  # status of the working-set loop: a non-finite KKT violation


def available(*tensors: Tensor) -> bool:
    """Whether the compiled solver can take these tensors: CPU, float32/64, plain storage."""
    return all(t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64)
               and not t.requires_grad and _has_storage(t) for t in tensors)


def solve_quadratic(G: Tensor, slots: Tensor, grad: Tensor, w: Tensor, separable: tuple,
                    tol: float, max_epochs: int
                    ) -> tuple[Tensor, int, SupportSolve | None, Tensor]:
    """``argmin_v`` of the model on the rows/columns ``slots`` of ``G`` (a buffer holding the
    Gram matrix of more features than the model's; no gather), from ``w``, with the linear term
    ``b = Gw − grad`` (the model of ``f`` at ``w`` when ``grad = ∇f(w)``).

    Args:
        G: ``(m, m)`` buffer, ``G[slots][:, slots]`` the model's matrix.
        slots: ``(k,)`` positions of the model's features in ``G``.
        grad: ``(k,)`` gradient of the smooth part at ``w``.
        w: ``(k,)`` starting point.
        separable: ``(λ₁, λ₂, nonneg)`` of the penalty (``penalty.separable``); ``λ``'s numbers
            or ``(k,)`` tensors.
        tol: on the model's KKT violation.
        max_epochs: cap on the epochs.

    Returns the solution, the iterations (epochs plus active-set rounds), when the exact solve
    on the support ended it, that solve (positions of the support among the ``k``, ``G_SS``
    and the Cholesky factor of ``G_SS + diag λ₂``) for reuse, and ``b``.
    """
    k = w.numel()
    l1, l2, nonneg = separable
    v = w.numpy().copy()
    b = np.empty_like(v)
    epochs, support, gram, factor = _coordinate_descent(
        G.numpy(), slots.numpy(), grad.numpy(), v, b, _per_feature(l1, k, v.dtype),
        _per_feature(l2, k, v.dtype), bool(nonneg), float(tol), int(max_epochs))
    v, b = torch.from_numpy(v), torch.from_numpy(b)
    if factor.shape[0] == 0:
        return v, epochs, None, b
    return v, epochs, SupportSolve(v, torch.from_numpy(support), torch.from_numpy(gram),
                                   torch.from_numpy(factor)), b


def _per_feature(value, k: int, dtype) -> np.ndarray:
    """A penalty parameter (a number or a tensor broadcastable to ``(k,)``) as ``k`` values, in
    a fresh writeable array: numba compiles the kernels anew for a read-only one (a broadcast
    view is read-only), which costs seconds."""
    if isinstance(value, Tensor):
        value = value.detach().cpu().numpy()
        return np.broadcast_to(value, (k,)).astype(dtype, copy=True)
    return np.full(k, float(value), dtype=dtype)


def _has_storage(t: Tensor) -> bool:
    try:
        t.numpy()
    except RuntimeError:  # a tensor wrapped by a torch.func transform
        return False
    return True


_jit = numba.njit(cache=True, nogil=True)
# the inner loops: reassociation lets them vectorise (no assumption on NaN/Inf)
_fast = numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract", "nsz", "arcp"})


@_jit
def _coordinate_descent(Gbuf, slots, grad, v, b, l1, l2, nonneg, tol, max_epochs):
    k = v.shape[0]
    G = np.empty((k, k), dtype=v.dtype)  # the model's matrix, contiguous
    for a in range(k):
        for c in range(k):
            G[a, c] = Gbuf[slots[a], slots[c]]
    _gradient(G, grad, v, b)  # b = Gv − grad
    q = grad.copy()  # q = Gv − b
    no_support = np.zeros(0, dtype=np.int64)
    no_matrix = np.zeros((0, 0), dtype=v.dtype)
    signs = np.empty_like(v)
    tried = np.full(k, 2.0, dtype=v.dtype)  # no sign pattern tried yet
    iterates = np.empty((ANDERSON + 1, k), dtype=v.dtype)  # the last epochs' v
    iterates[0] = v
    rounds = 0
    for epoch in range(max_epochs + 1):
        if epoch > 0:
            _sweep(G, v, q, l1, l2, nonneg)
            iterates[(epoch - 1) % ANDERSON + 1] = v
            if epoch % ANDERSON == 0:
                _extrapolate(G, b, v, q, iterates, l1, l2, nonneg)
                iterates[0] = v
        if _violation(v, q, l1, l2, nonneg) <= tol:
            return epoch + rounds, no_support, no_matrix, no_matrix
        if epoch % CHECK:
            continue
        x, q_x = v.copy(), q.copy()  # active-set rounds from the CD iterate
        for _ in range(ROUNDS):
            _prox_signs(G, x, q_x, l1, l2, nonneg, signs)
            if np.array_equal(signs, tried):
                break
            tried[:] = signs
            rounds += 1
            support, gram, factor, solution = _solve_on_support(G, b, signs, l1, l2)
            if factor.shape[0] == 0:
                break
            x[:] = 0.0
            x[support] = solution
            _gradient(G, b, x, q_x)
            if _violation(x, q_x, l1, l2, nonneg) <= tol:
                v[:] = x
                return epoch + rounds, support, gram, factor
    return max_epochs + rounds, no_support, no_matrix, no_matrix


@_jit
def _sweep(G, v, q, l1, l2, nonneg):
    """One epoch of cyclic coordinate descent (``q = Gv − b`` kept up to date)."""
    for j in range(v.shape[0]):
        old = v[j]
        new = _coordinate_step(G[j, j] * old - q[j], G[j, j] + l2[j], l1[j], nonneg)
        if new != old:
            v[j] = new
            _axpy(new - old, G[j], q)


@_jit
def _coordinate_step(r, d, l1, nonneg):
    """``argmin_x ½dx² − rx + λ₁|x|`` (``x ≥ 0`` if nonneg): ``S(r, λ₁)/d``; 0 when ``d = 0``
    (a zero column, no curvature)."""
    if d <= 0.0:
        return 0.0
    if nonneg:
        return max(r - l1, 0.0) / d
    if r > l1:
        return (r - l1) / d
    if r < -l1:
        return (r + l1) / d
    return 0.0


@_jit
def _gap(x, g, l1, nonneg):
    """Distance of ``−g`` to ``λ₁∂|x|`` (to ``λ₁ + ∂ι(x ≥ 0)`` if nonneg): the KKT violation
    of one coordinate, as ``penalty.violation`` measures it."""
    if x > 0.0:
        return abs(g + l1)
    if x < 0.0:
        return np.inf if nonneg else abs(g - l1)
    if nonneg:
        return max(-g - l1, 0.0)
    return max(abs(g) - l1, 0.0)


@_jit
def _extrapolate(G, b, v, q, iterates, l1, l2, nonneg):
    """Anderson extrapolation of the epochs' iterates ``x_0 … x_m`` (as in skglm): the affine
    combination ``Σ c_i x_i`` (``Σ c_i = 1``, ``i ≥ 1``) that minimises ``‖Σ c_i (x_i −
    x_{i−1})‖``, i.e. ``c ∝ C⁻¹1`` with ``C = UᵀU``, ``U`` the differences (``C`` shifted by
    ``10⁻¹⁰ max C_ii``); it replaces ``v`` (and ``q``) when it lowers the objective."""
    m = iterates.shape[0] - 1
    k = v.shape[0]
    U = np.empty((m, k), dtype=v.dtype)
    for i in range(m):
        for j in range(k):
            U[i, j] = iterates[i + 1, j] - iterates[i, j]
    C = np.empty((m, m), dtype=v.dtype)
    for i in range(m):
        for j in range(m):
            C[i, j] = _dot(U[i], U[j], k)
    shift = 0.0
    for i in range(m):
        shift = max(shift, 1e-10 * C[i, i])
    if not shift > 0.0:
        return
    factor = _cholesky(C, np.full(m, shift, dtype=v.dtype))
    if factor.shape[0] == 0:
        return
    c = _cholesky_solve(factor, np.ones(m, dtype=v.dtype))
    total = c.sum()
    if not (np.isfinite(total) and total != 0.0):
        return
    x = np.zeros_like(v)
    for i in range(m):
        _axpy(c[i] / total, iterates[i + 1], x)
    if nonneg:
        for j in range(k):
            x[j] = max(x[j], 0.0)
    q_x = np.empty_like(v)
    _gradient(G, b, x, q_x)
    if _objective(x, q_x, b, l1, l2) < _objective(v, q, b, l1, l2):
        v[:] = x
        q[:] = q_x


@_jit
def _prox_signs(G, x, q, l1, l2, nonneg, signs):
    """The signs a coordinate step from ``x`` (``q = Gx − b``) would give each coordinate."""
    for j in range(x.shape[0]):
        signs[j] = np.sign(_coordinate_step(G[j, j] * x[j] - q[j], G[j, j] + l2[j], l1[j],
                                            nonneg))


@_jit
def _objective(v, q, b, l1, l2):
    """``½vᵀGv − bᵀv + g(v)``, from ``q = Gv − b``."""
    total = 0.0
    for j in range(v.shape[0]):
        total += v[j] * (0.5 * (q[j] - b[j]) + 0.5 * l2[j] * v[j]) + l1[j] * abs(v[j])
    return total


@_fast
def _axpy(a, x, y):
    """``y += a x``."""
    for i in range(y.shape[0]):
        y[i] += a * x[i]


@_fast
def _dot(x, y, n):
    """``Σ_{i<n} x_i y_i``."""
    total = 0.0
    for i in range(n):
        total += x[i] * y[i]
    return total


@_jit
def _gradient(G, b, v, q):
    """``q = Gv − b`` (over the nonzero coordinates of ``v``)."""
    q[:] = -b
    for j in range(v.shape[0]):
        if v[j] != 0.0:
            _axpy(v[j], G[j], q)


@_jit
def _violation(v, q, l1, l2, nonneg):
    """Largest KKT violation (:func:`_gap`) at ``v``, with ``q = Gv − b``."""
    worst = 0.0
    for j in range(v.shape[0]):
        worst = max(worst, _gap(v[j], q[j] + l2[j] * v[j], l1[j], nonneg))
    return worst


@_jit
def _solve_on_support(G, b, signs, l1, l2):
    """``(G_SS + diag λ₂_S) v_S = b_S − λ₁_S signs_S`` on ``S = {signs ≠ 0}``: the positions
    of ``S``, ``G_SS``, the Cholesky factor (empty if not numerically positive definite) and
    ``v_S``."""
    support = np.nonzero(signs)[0]
    s = support.shape[0]
    gram = np.empty((s, s), dtype=b.dtype)
    shift = np.empty(s, dtype=b.dtype)
    rhs = np.empty(s, dtype=b.dtype)
    for a in range(s):
        j = support[a]
        for c in range(s):
            gram[a, c] = G[j, support[c]]
        shift[a] = l2[j]
        rhs[a] = b[j] - l1[j] * signs[j]
    factor = _cholesky(gram, shift)
    if factor.shape[0] == 0:
        return support, gram, factor, rhs
    return support, gram, factor, _cholesky_solve(factor, rhs)


@_jit
def _cholesky(A, shift):
    """Lower Cholesky factor of ``A + diag(shift)``, row by row; empty (0×0) when a pivot is
    not positive."""
    s = A.shape[0]
    factor = np.zeros((s, s), dtype=A.dtype)
    for j in range(s):
        for i in range(j):
            factor[j, i] = (A[j, i] - _dot(factor[j], factor[i], i)) / factor[i, i]
        d = A[j, j] + shift[j] - _dot(factor[j], factor[j], j)
        if not d > 0.0:
            return np.zeros((0, 0), dtype=A.dtype)
        factor[j, j] = np.sqrt(d)
    return factor


@_jit
def _cholesky_solve(factor, rhs):
    """``(LLᵀ)⁻¹ rhs``."""
    s = rhs.shape[0]
    x = np.empty_like(rhs)
    for i in range(s):  # L y = rhs
        x[i] = (rhs[i] - _dot(factor[i], x, i)) / factor[i, i]
    for i in range(s - 1, -1, -1):  # Lᵀ x = y
        total = x[i]
        for m in range(i + 1, s):
            total -= factor[m, i] * x[m]
        x[i] = total / factor[i, i]
    return x


@_jit
def _coordinate_descent_columns(Xt, s, c, v, l1, l2, nonneg, tol, max_epochs):
    """``argmin_v F(X_W v) + g(v)`` for a quadratic datafit with constant curvature ``c``,
    from ``v`` (in place), by coordinate descent on the columns themselves (for working sets
    too large for their Gram matrix): ``s = F'(X_W v)`` (``(n,)``, in place) is kept up to
    date (``s += c δ x_j`` when ``v_j`` moves by ``δ``), each coordinate's gradient is
    ``x_jᵀs`` and its curvature ``c‖x_j‖²``; an epoch costs ``2nk``. ``Xt``: ``(k, n)``, the
    columns one per row. Stops when the KKT violation, met during an epoch and confirmed by a
    pass without updates, is ``≤ tol``; returns the epochs run."""
    k, n = Xt.shape
    h = np.empty_like(v)
    for j in range(k):
        h[j] = c * _dot(Xt[j], Xt[j], n)
    for epoch in range(1, max_epochs + 1):
        worst = _sweep_columns(Xt, s, c, h, v, l1, l2, nonneg, True)
        if worst <= tol and _sweep_columns(Xt, s, c, h, v, l1, l2, nonneg, False) <= tol:
            return epoch
    return max_epochs


@_jit
def _sweep_columns(Xt, s, c, h, v, l1, l2, nonneg, update):
    """One epoch over the columns (``update``) or a pass that only measures; returns the
    largest KKT violation met (each coordinate's before its own update)."""
    n = s.shape[0]
    worst = 0.0
    for j in range(v.shape[0]):
        g = _dot(Xt[j], s, n)
        old = v[j]
        worst = max(worst, _gap(old, g + l2[j] * old, l1[j], nonneg))
        if not update:
            continue
        new = _coordinate_step(h[j] * old - g, h[j] + l2[j], l1[j], nonneg)
        if new != old:
            v[j] = new
            _axpy(c * (new - old), Xt[j], s)
    return worst


class LoopResult(NamedTuple):
    """What :func:`solve_least_squares` returns; ``W``, ``slots`` and ``b`` are the last
    working set solved on its Gram matrix, its slots in the cache and ``b = c X_Wᵀy`` (``None``
    if none was), ``exact`` the exact solve on the support that ended it (``None`` if none
    did)."""

    w: Tensor
    residual: float
    iterations: int
    working_sets: int
    grad: Tensor  # ∇f at w
    W: Tensor | None
    slots: Tensor | None
    b: Tensor | None
    exact: tuple[Tensor, Tensor, Tensor] | None  # positions of S in W, G_SS, factor
    col_sq: float  # the largest ‖x_j‖² over the working sets


def solve_least_squares(X: np.ndarray, y: np.ndarray, curvature: float, w: Tensor,
                        separable: tuple, cache, *, tol: float, maxiter: int, ws_start: int,
                        gram_max: int, sub_maxiter: int) -> LoopResult:
    """The working-set loop from ``w`` for ``F(z) = c‖z − y‖²/2`` and the penalty
    ``separable = (λ₁, λ₂, nonneg)`` (numbers or per-feature tensors).

    Args:
        X: ``(n, p)`` C-contiguous array; ``y``: ``(n,)``, same dtype.
        curvature: ``c``.
        w: ``(p,)`` starting point (not modified).
        cache: the solver's Gram cache (``arrays()`` and ``adopt(...)``, see
            ``solvers.workingset._GramCache``).
        tol, maxiter, ws_start, gram_max, sub_maxiter: as ``WorkingSet``'s.

    Raises:
        ValueError: a non-finite KKT violation (NaN/Inf in the data or θ).
    """
    p = w.numel()
    l1, l2, nonneg = separable
    v = w.numpy().copy()
    Xt, G, slot, size = cache.arrays()
    (status, residual, iterations, visited, grad, Xt, G, size, col_sq, W, slots, b, support,
     gram, factor) = _working_set_loop(
        X, y, float(curvature), v, _per_feature(l1, p, v.dtype), _per_feature(l2, p, v.dtype),
        bool(nonneg), float(tol), int(maxiter), int(ws_start), int(gram_max), int(sub_maxiter),
        Xt, G, slot, size, 4 * int(gram_max))
    has_gram = W.shape[0] > 0
    slots_t = torch.from_numpy(slots) if has_gram else None
    cache.adopt(Xt, G, size, slots_t)
    if status == NOT_FINITE:
        raise ValueError("non-finite gradient: check X, y and theta for NaN/Inf")
    v = torch.from_numpy(v)
    exact = None
    if factor.shape[0]:
        exact = tuple(torch.from_numpy(a) for a in (support, gram, factor))
    return LoopResult(v, float(residual), int(iterations), int(visited), torch.from_numpy(grad),
                      torch.from_numpy(W) if has_gram else None, slots_t,
                      torch.from_numpy(b) if has_gram else None, exact, float(col_sq))


@_jit
def _working_set_loop(X, y, c, w, l1, l2, nonneg, tol, maxiter, ws_start, gram_max,
                     sub_maxiter, Xt, G, slot, size, cap):
    """Solve from ``w`` (updated in place). ``X (n, p)`` C-contiguous, ``y (n,)``, ``c`` the
    curvature, ``l1, l2 (p,)`` per feature, ``Xt, G, slot, size`` the Gram cache (``cap``:
    its largest ``|C|`` before a reset).

    Returns ``(status, residual, iterations, working sets, ∇f(w), Xt, G, size, col_sq,
    W, slots, b, support, gram, factor)``: status 0, or :data:`NOT_FINITE`; ``∇f`` at the
    returned ``w`` (also when ``maxiter`` stopped the loop); the cache's buffers and size;
    ``col_sq`` the largest ``‖x_j‖²`` over the working sets; the last Gram-path working set
    ``W``, its slots and ``b`` (empty if none); the exact solve on the support that ended it
    (positions in ``W``, ``G_SS``, Cholesky factor; empty if none)."""
    n, p = X.shape
    dtype = w.dtype
    z = np.zeros(n, dtype=dtype)
    for i in range(n):
        z[i] = _dot(X[i], w, p)
    s = np.empty(n, dtype=dtype)
    grad = np.empty(p, dtype=dtype)
    violation = np.empty(p, dtype=dtype)
    empty_index = np.zeros(0, dtype=np.int64)
    W, slots, b = empty_index, empty_index, np.zeros(0, dtype=dtype)
    support, gram, factor = empty_index, np.zeros((0, 0), dtype=dtype), \
        np.zeros((0, 0), dtype=dtype)
    col_sq, iterations, visited, residual = 0.0, 0, 0, np.inf
    while True:
        for i in range(n):  # ∇f = Xᵀ c(z − y), row by row (X is row-major)
            s[i] = c * (z[i] - y[i])
        grad[:] = 0.0
        for i in range(n):
            _axpy(s[i], X[i], grad)
        residual = 0.0
        supported = 0
        for j in range(p):
            gap = _gap(w[j], grad[j] + l2[j] * w[j], l1[j], nonneg)
            if not np.isfinite(gap):  # NaN/Inf in X, y or λ, or a negative w under nonneg
                return (NOT_FINITE, gap, iterations, visited, grad, Xt, G, size, col_sq,
                        W, slots, b, support, gram, factor)
            residual = max(residual, gap)
            violation[j] = gap
            if w[j] != 0.0:
                supported += 1
                violation[j] = np.inf  # the support stays in the working set
        if residual <= tol or visited >= maxiter:
            break
        visited += 1
        k = min(p, max(ws_start, 2 * supported))
        W_now = _largest(violation, k)
        v = _gather(w, W_now)
        if k <= gram_max:
            Xt, G, size = _grow(X, c, W_now, Xt, G, slot, size, cap)
            slots = _gather(slot, W_now)
            for a in range(k):
                col_sq = max(col_sq, G[slots[a], slots[a]] / c)
            b = np.empty(k, dtype=dtype)
            epochs, support, gram, factor = _coordinate_descent(
                G, slots, _gather(grad, W_now), v, b, _gather(l1, W_now), _gather(l2, W_now),
                nonneg, tol, sub_maxiter)
            W = W_now
            z[:] = 0.0
            for a in range(k):
                if v[a] != 0.0:
                    _axpy(v[a], Xt[slots[a]], z)
        else:  # too large for its Gram matrix: coordinate descent on the columns
            XtW = np.empty((k, n), dtype=dtype)
            for a in range(k):
                for i in range(n):
                    XtW[a, i] = X[i, W_now[a]]
                col_sq = max(col_sq, _dot(XtW[a], XtW[a], n))
            # s = c(z − y) from the gradient step above; the kernel keeps it up to date
            epochs = _coordinate_descent_columns(XtW, s, c, v, _gather(l1, W_now),
                                                 _gather(l2, W_now), nonneg,
                                                 tol, sub_maxiter)
            z[:] = 0.0
            for a in range(k):
                if v[a] != 0.0:
                    _axpy(v[a], XtW[a], z)
            support = empty_index
            gram, factor = np.zeros((0, 0), dtype=dtype), np.zeros((0, 0), dtype=dtype)
        iterations += epochs
        w[:] = 0.0
        for a in range(k):
            w[W_now[a]] = v[a]
    return (0, residual, iterations, visited, grad, Xt, G, size, col_sq, W, slots, b, support,
            gram, factor)


@_jit
def _grow(X, c, W, Xt, G, slot, size, cap):
    """Add the columns of ``W`` not in the cache (``_GramCache.grow``, same layout): ``Xt``
    rows and the block ``c X_CᵀX_new`` of ``G`` (``C`` reset to ``W`` when ``|C|`` would pass
    ``cap``; buffers of doubled capacity when full). Returns ``Xt, G, size``."""
    n = X.shape[0]
    new = np.empty_like(W)
    k = 0
    for j in W:
        if slot[j] < 0:
            new[k] = j
            k += 1
    new = new[:k]
    if size + new.shape[0] > cap:
        slot[:] = -1
        size, new = 0, W
    k = new.shape[0]
    if k == 0:
        return Xt, G, size
    if size + k > Xt.shape[0]:
        capacity = max(size + k, 2 * Xt.shape[0], 256)
        Xt_new = np.empty((capacity, n), dtype=Xt.dtype)
        G_new = np.empty((capacity, capacity), dtype=G.dtype)
        for r in range(size):  # (loops: numba's 2-D slice assignment compiles for seconds)
            Xt_new[r, :] = Xt[r]
            for a in range(size):
                G_new[r, a] = G[r, a]
        Xt, G = Xt_new, G_new
    for a in range(k):
        j = new[a]
        for i in range(n):
            Xt[size + a, i] = X[i, j]
        slot[j] = size + a
    block = np.dot(Xt[:size + k], Xt[size:size + k].T)  # [X_Cᵀ x_new; X_newᵀ X_new]
    for r in range(size + k):
        for a in range(k):
            value = c * block[r, a]
            G[r, size + a] = value
            G[size + a, r] = value
    return Xt, G, size + k


@_jit
def _gather(source, index):
    """``source[index]`` (a loop: numba's fancy indexing costs seconds of compilation)."""
    out = np.empty(index.shape[0], dtype=source.dtype)
    for a in range(index.shape[0]):
        out[a] = source[index[a]]
    return out


@_jit
def _largest(score, k):
    """The positions of the ``k`` largest scores, in increasing order."""
    chosen = np.zeros(score.shape[0], dtype=np.bool_)
    for j in np.argsort(-score)[:k]:
        chosen[j] = True
    return np.nonzero(chosen)[0]
