"""Working-set solver for sparse generalized linear models: ``min_w F(Xw) + g(w; θ)``.

``F`` is a datafit (``solvers.datafits``: least squares, logistic) and ``g`` a separable
penalty (``solvers.penalties``: ℓ1, weighted ℓ1, elastic net, nonnegative ℓ1).

Algorithm (in the spirit of celer / skglm, written for torch):

1. full gradient ``∇f(w) = Xᵀ F'(Xw)`` and the KKT violation of every feature (distance of
   ``−∇f`` to ``∂g``); stop when its maximum is ``≤ tol``;
2. working set ``W`` = the support ∪ the most violating features (size ``max(ws_start, 2|S|)``);
3. solve the problem restricted to ``W`` — for least squares, on the small Gram matrix
   ``X_WᵀX_W/n`` (kept across working sets and grown by the new columns only); for other
   datafits, by proximal Newton steps on the same kind of quadratic model and a backtracking
   line search. The quadratic models are solved, on the CPU, by compiled coordinate descent
   finished by the exact solve on the support it finds (``solvers.coordinate_descent``); on a
   GPU, by primal-dual active-set rounds (a prox-gradient step guesses the support and signs,
   the exact solve on that support follows) with FISTA as the fallback. Least-squares working
   sets past ``gram_max`` features go without their Gram matrix: coordinate descent on the
   columns (CPU) or FISTA with products by ``X_W``;
4. repeat. Warm starts (``init``) across calls with a different θ are the normal use.

For least squares on the CPU the whole loop runs compiled, in one call
(``coordinate_descent.solve_least_squares``, the same steps); the torch loop serves the other
datafits and devices, and ``sub_solver="torch"``.

Optimality mapping (the prox-gradient residual, ``solvers.prox_mapping``):

    H(θ, w) = w − prox_{ηg(·;θ)}(w − η Xᵀ F'(Xw)),   H(θ, w*) = 0,

with ``η = 1 / (sup F'' · max_j ‖x_j‖²)``, the max over the columns the working sets visited
(any ``η > 0`` has the same zeros and gives the same implicit derivative). Every penalty here
has inactive coordinates exactly 0 whatever θ, so the solver also offers the mapping *reduced
to the support* (``X`` replaced by ``X_S``, or the working set's Gram matrix for least squares):
the engine then solves the implicit system on ``|S|`` unknowns with products that cost
``O(n|S|)`` (``O(|S|²)``), not ``O(np)``. For least squares it also offers the exact inverse
of that reduced ``∂yH`` (``restricted_preconditioner``, a Cholesky factor of the Gram matrix on
the support), so the hypergradient costs one VJP of the reduced mapping.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from solvers.base import SolveInfo, Structure, Theta, check_stopping, warn_not_converged
from solvers.datafits import DATAFITS, Quadratic
from solvers.fista import momentum
from solvers.penalties import SupportSolve
from solvers.prox_mapping import ProxGradientMapping, detach


class WorkingSet:
    """Working-set solver (see the module docstring).

    Args:
        X: design matrix ``(n, p)``, floating point.
        y: targets ``(n,)`` (labels in ``{−1, 1}`` or ``{0, 1}`` for ``datafit="logistic"``).
        penalty: a penalty of ``solvers.penalties`` (``L1``, ``ElasticNet``, ``NonnegL1``).
        datafit: ``"quadratic"``, ``"logistic"`` or a datafit object.
        tol: tolerance on the maximal KKT violation.
        maxiter: cap on working-set iterations.
        ws_start: smallest working set.
        sub_maxiter: cap on the iterations of the quadratic sub-solver.
        gram_max: largest working set whose Hessian (Gram matrix) is formed; larger working
            sets (least squares) are solved on their columns: compiled coordinate descent on
            the CPU, FISTA with products by ``X_W`` otherwise.
        sub_solver: ``"auto"``: on the CPU, compiled coordinate descent solves the quadratic
            models (``solvers.coordinate_descent``) and, for least squares, the whole loop
            runs compiled (``coordinate_descent.solve_least_squares``); on other devices, the
            torch loop with torch active-set rounds then FISTA. ``"torch"``: the torch loop
            and sub-solver everywhere.

    Attributes:
        info: :class:`~solvers.base.SolveInfo` of the last run (iterations: the sub-solver's
            iterations summed over working sets; 0 when ``init`` already solves the problem).
        n_working_sets: working sets visited by the last run.
        step: ``η`` of the optimality mapping.
    """

    batch_ndim = 0

    def __init__(self, X: Tensor, y: Tensor, penalty, *, datafit="quadratic", tol: float = 1e-10,
                 maxiter: int = 100, ws_start: int = 10, sub_maxiter: int = 20_000,
                 gram_max: int = 512, sub_solver: str = "auto"):
        _check_data(X, y)
        if sub_solver not in ("auto", "torch"):
            raise ValueError(f"sub_solver must be 'auto' or 'torch', got {sub_solver!r}")
        check_stopping(tol)
        self.X = X
        self.datafit = DATAFITS[datafit](y) if isinstance(datafit, str) else datafit
        self.penalty = penalty
        self.tol = tol
        self.maxiter = maxiter
        self.ws_start = ws_start
        self.sub_maxiter = sub_maxiter
        self.gram_max = gram_max
        self.sub_solver = sub_solver
        self._col_sq = 0.0  # max_j ‖x_j‖² over the working sets visited so far
        self.mapping = ProxGradientMapping(self._smooth, self._prox, self._gradient)
        self.info: SolveInfo | None = None
        self._last: tuple[Tensor | None, Tensor | None] = (None, None)
        self._gram: tuple[Tensor | None, Tensor | None, Tensor | None] = (None, None, None)
        self._cache: _GramCache | None = None  # columns visited and their Gram matrix
        # (S, G_SS, b_S, Cholesky factor of G_SS + λ₂I) of the exact solve the last run ended on
        self._exact: tuple[Tensor, Tensor, Tensor, Tensor] | None = None
        self._X_rows: np.ndarray | None = None  # X for the compiled loop

    # -- protocol ----------------------------------------------------------------------------

    @property
    def step(self) -> float:
        """``η`` of the optimality mapping."""
        if self._col_sq == 0.0:  # no working set visited yet: use every column
            self._col_sq = float(torch.linalg.vector_norm(self.X, dim=0).max()) ** 2
        return 1.0 / (self.datafit.curvature_bound() * max(self._col_sq, 1e-300))

    def run(self, theta: Theta, init: Tensor | None = None) -> Tensor:
        """Solve at ``θ`` from ``init`` (default zeros); returns ``w*`` (no graph)."""
        X, p = self.X, self.X.shape[1]
        theta = detach(theta)
        params = _plain(self._params(theta))
        w = torch.zeros(p, dtype=X.dtype, device=X.device) if init is None else init.clone()
        if w.shape != (p,):
            raise ValueError(f"init has shape {tuple(w.shape)}, expected ({p},)")
        self._exact = None
        self.n_working_sets = 0
        compiled = self._compiled(X, w) if isinstance(self.datafit, Quadratic) else None
        if compiled is not None:
            w, residual, iterations, grad = self._run_compiled(compiled, w, params)
        else:
            w, residual, iterations, grad = self._run_torch(w, theta, params)
        self.info = SolveInfo(iterations, residual, self.tol, residual <= self.tol, self.step)
        self._last = (w, grad)  # ∇f at the returned w (None if the torch loop hit maxiter)
        if not self.info.converged:
            warn_not_converged("WorkingSet", self.info, "Raise maxiter or loosen tol.")
        return w

    def _run_torch(self, w: Tensor, theta: Theta, params: dict
                   ) -> tuple[Tensor, float, int, Tensor | None]:
        """The working-set loop in torch (any datafit, any device). Returns ``w``, the KKT
        residual, the sub-solver's iterations and ``∇f(w)`` (``None`` if it hit maxiter)."""
        X = self.X
        z = X @ w if bool(w.any()) else w.new_zeros(X.shape[0])
        residual, iterations, grad = math.inf, 0, None
        while self.n_working_sets < self.maxiter:
            grad = X.T @ self.datafit.derivative(z)
            violation = self.penalty.violation(w, grad, params)
            residual = float(violation.max())
            if not math.isfinite(residual):
                raise ValueError("non-finite gradient: check X, y and theta for NaN/Inf")
            if residual <= self.tol:
                break
            self.n_working_sets += 1
            W = self._working_set(w, violation)
            w_W, sub_iterations, z = self._solve_restricted(
                W, w[W], z, grad[W], _plain(self.penalty.params(theta, W)))
            grad = None
            iterations += sub_iterations
            w = torch.zeros_like(w)
            w[W] = w_W
        return w, residual, iterations, grad

    def _run_compiled(self, compiled, w: Tensor, params: dict
                      ) -> tuple[Tensor, float, int, Tensor]:
        """The same loop for least squares, in one compiled call
        (``compiled.solve_least_squares``, ``compiled`` the module ``solvers.coordinate_descent``);
        it grows the same Gram cache and leaves the same state (``_gram``, ``_exact``)."""
        result = compiled.solve_least_squares(
            self._rows(), self._targets(), self.datafit.curvature_bound(), w,
            self.penalty.separable(params), self._gram_cache(), tol=self.tol,
            maxiter=self.maxiter, ws_start=self.ws_start, gram_max=self.gram_max,
            sub_maxiter=self.sub_maxiter)
        self.n_working_sets = result.working_sets
        self._col_sq = max(self._col_sq, result.col_sq)
        if result.W is not None:
            self._gram = (result.W, result.slots, result.b)
        if result.exact is not None:
            support, gram, factor = result.exact
            self._exact = (result.W[support], gram, result.b[support], factor)
        return result.w, result.residual, result.iterations, result.grad

    def optimality(self, y: Tensor, theta: Theta) -> Tensor:
        """``H(θ, w) = w − prox(w − η∇f(w), θ, η)``."""
        return self.mapping(y, theta, self.step)

    def structure(self, y: Tensor, theta: Theta) -> Structure:
        """Inactive rows and kink distances of ``H`` (reuses the last run's gradient at y)."""
        w, grad = self._last
        if grad is None or not torch.equal(w, y):
            grad = None
        return self.mapping.structure(y, theta, self.step, grad)

    def optimality_at_selection(self, y: Tensor, theta: Theta, side: int,
                                kink_tol: float) -> Tensor:
        return self.mapping.at_selection(y, theta, self.step, side, kink_tol)

    def structure_at_selection(self, y: Tensor, theta: Theta, side: int,
                               kink_tol: float) -> Structure:
        return self.mapping.structure_at_selection(y, theta, self.step, side, kink_tol)

    def restricted_optimality(self, y: Tensor, theta: Theta, index: Tensor
                              ) -> Callable[[Tensor, Theta], Tensor]:
        """``(w_S, θ) ↦ H_S`` with ``w`` zero off ``index``: the mapping of the problem on
        ``X_S``. Its Jacobian is ``[A_S B_SS]``, and ``A_I = 0`` (inactive coordinates stay 0)."""
        penalty = self.penalty
        smooth, gradient = self._restricted_smooth(index)
        mapping = ProxGradientMapping(
            smooth, lambda v, t, step: penalty.prox(v, penalty.params(t, index), step), gradient
        )
        return lambda w_S, t: mapping(w_S, t, self.step)

    def _restricted_smooth(self, index: Tensor) -> tuple[Callable, Callable]:
        """``w_S ↦ F(X_S w_S)`` and its gradient; for a quadratic datafit, the same function
        written with the Gram matrix the last working-set solve already formed (``½wᵀGw − bᵀw``
        up to a constant), so that each product with ``∂H`` costs ``O(|S|²)``, not ``O(n|S|)``."""
        gram = self._gram_on(index)
        if gram is not None:
            G_SS, b_S = gram
            return (lambda w, t: 0.5 * (w @ (G_SS @ w)) - b_S @ w,
                    lambda w, t: G_SS @ w - b_S)
        X_S, datafit = self._columns(index), self.datafit
        return (lambda w, t: datafit.value(X_S @ w),
                lambda w, t: X_S.T @ datafit.derivative(X_S @ w))

    def restricted_preconditioner(self, y: Tensor, theta: Theta, index: Tensor
                                  ) -> Callable[[Tensor], Tensor] | None:
        """``r ↦ B_SS⁻¹ r`` for the reduced system of ``restricted_optimality`` (``r`` of shape
        ``(1, |S|)``): the exact inverse, in closed form from the working set's Gram matrix.

        For a quadratic datafit the reduced mapping is ``H_S = w_S − prox(w_S − η(G_SS w_S −
        b_S))`` and the prox of every penalty here has a slope ``s`` on the support
        (``penalty.slope``: 1 for ℓ1 and nonnegative ℓ1, ``1/(1 + ηλ₂)`` for the elastic net),
        so ``B_SS = ∂H_S/∂w_S = (1 − s) I + sη G_SS``: symmetric positive definite when ``s`` is
        one number, factored by Cholesky; the engine then needs no product with ``B_SS`` to
        solve, only the one VJP that gives the hypergradient and checks the residual. With
        ``s = 1/(1 + ηλ₂)`` (λ₂ = 0 for ℓ1) this is ``B_SS = sη (G_SS + λ₂I)``, the matrix the
        sub-solver's last exact solve on ``S`` already factored: that factor is reused.
        ``None`` (the engine then builds ``B_SS`` and checks its conditioning) for other
        datafits, a slope varying across features (``B_SS`` not symmetric), when the Gram
        matrix does not cover the support, or when the factor is close to singular."""
        gram = self._gram_on(index) if self.datafit.quadratic else None
        if gram is None or index.numel() == 0:
            return None
        params = _plain(self.penalty.params(detach(theta), index))
        slope = self.penalty.slope(params, self.step)
        if isinstance(slope, Tensor):
            if slope.numel() > 1 and not bool((slope == slope.flatten()[0]).all()):
                return None
            slope = float(slope.flatten()[0])
        scale = slope * self.step
        exact, l2 = self._on_exact(index), params.get("l2", 0.0)
        eps = torch.finfo(gram[0].dtype).eps
        if exact is not None and isinstance(l2, float) and \
                abs((1.0 - slope) - scale * l2) <= 8 * eps:
            _, _, _, factor = exact  # B_SS = sη (G_SS + λ₂I), factored by the last solve
        else:
            M = gram[0] * scale
            M.diagonal().add_(1.0 - slope)
            factor, info = torch.linalg.cholesky_ex(M)
            if int(info) != 0:
                return None
            scale = 1.0
        pivots = factor.diagonal()
        if float(pivots.min() / pivots.max()) ** 2 < 100 * index.numel() * eps:
            return None
        return lambda r: torch.cholesky_solve(r.mT, factor).mT / scale

    # -- internals ---------------------------------------------------------------------------

    def _gram_on(self, index: Tensor) -> tuple[Tensor, Tensor] | None:
        """``(G_SS, b_S)``: the last formed Gram matrix ``G`` and linear term ``b`` (of the
        working set ``W``, ``self._gram``) restricted to the features ``index`` (as the exact
        solve the last run ended on formed them when ``index`` is its support), or
        ``None`` if one of them is not in ``W``. Callers must not modify them."""
        exact = self._on_exact(index)
        if exact is not None:
            _, G_SS, b_S, _ = exact
            return G_SS, b_S
        W, slots, b = self._gram
        if W is None:
            return None
        pos = torch.searchsorted(W, index).clamp_(max=W.numel() - 1)  # W is sorted
        if not bool((W[pos] == index).all()):
            return None
        return self._cache.matrix(slots[pos]), b[pos]

    def _on_exact(self, index: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
        """The exact solve the last run ended on (``_exact``) if its support is ``index``."""
        exact = self._exact
        if exact is None:
            return None
        support = exact[0]
        return exact if support.numel() == index.numel() and torch.equal(support, index) else None

    def _smooth(self, w: Tensor, theta: Theta) -> Tensor:
        return self.datafit.value(self.X @ w)

    def _gradient(self, w: Tensor, theta: Theta) -> Tensor:
        return self.X.T @ self.datafit.derivative(self.X @ w)

    def _prox(self, v: Tensor, theta: Theta, step: float) -> Tensor:
        return self.penalty.prox(v, self.penalty.params(theta), step)

    def _params(self, theta: Theta) -> dict:
        params = self.penalty.params(theta)
        p = self.X.shape[1]
        for name, value in params.items():
            if isinstance(value, Tensor):
                if value.numel() not in (1, p):
                    raise ValueError(
                        f"penalty parameter {name} has {value.numel()} values: give one, or one "
                        f"per feature ({p})"
                    )
                if not bool(torch.isfinite(value).all()) or bool((value < 0).any()):
                    raise ValueError(f"penalty parameter {name} must be finite and ≥ 0")
        return params

    def _columns(self, index: Tensor) -> Tensor:
        """``X[:, index]``. On the CPU the gather goes through numpy: torch's column gather of a
        row-major matrix is 5–20× slower there (measured on torch 2.13) and it runs several
        times per working set."""
        X = self.X
        if X.device.type == "cpu" and not X.requires_grad:
            try:
                return torch.from_numpy(X.numpy()[:, index.numpy()])
            except RuntimeError:  # a tensor wrapped by a torch.func transform has no storage
                pass
        return X[:, index]

    def _working_set(self, w: Tensor, violation: Tensor) -> Tensor:
        support = w != 0
        size = min(w.numel(), max(self.ws_start, 2 * int(support.sum())))
        score = violation.masked_fill(support, math.inf)
        return torch.topk(score, size).indices.sort().values

    def _solve_restricted(self, W: Tensor, w: Tensor, z: Tensor, grad: Tensor, params: dict
                          ) -> tuple[Tensor, int, Tensor]:
        """Minimise ``F(X_W w) + g_W(w)`` from ``w`` (``z = X_W w``, ``grad = ∇_W f(w)``):
        exact model for a quadratic datafit, proximal Newton with backtracking otherwise.
        Returns the solution, the number of sub-solver iterations and its ``X_W w``."""
        datafit, penalty = self.datafit, self.penalty
        if datafit.quadratic and W.numel() <= self.gram_max:
            # F(X_W v) = ½vᵀGv − bᵀv + const with G = X_Wᵀ diag(F'') X_W, b = Gw − ∇_W f(w)
            cache = self._gram_cache()
            slots = cache.grow(W, 4 * self.gram_max)
            self._col_sq = max(self._col_sq, cache.col_sq)
            target, k, exact, linear = self._solve_model(cache.buffer, slots, w, grad, params)
            self._gram = (W, slots, linear)
            if exact is not None:
                self._exact = (W[exact.support], exact.gram, linear[exact.support], exact.factor)
            return target, k, self._cache.product(target)
        X_W = self._columns(W)
        self._col_sq = max(self._col_sq, float(torch.linalg.vector_norm(X_W, dim=0).max()) ** 2)
        if datafit.quadratic:  # a Gram matrix would cost more
            target, k = _solve_matrix_free(X_W, w, datafit, penalty, params, self.tol,
                                           self.sub_maxiter)
            return target, k, X_W @ target
        iterations = 0
        for _ in range(100):
            grad = X_W.T @ datafit.derivative(z)
            if float(penalty.violation(w, grad, params).max()) <= self.tol:
                break
            hessian = X_W.T @ (datafit.curvature(z)[:, None] * X_W)
            everything = torch.arange(w.numel(), device=w.device)
            target, k, _, _ = self._solve_model(hessian, everything, w, grad, params, hessian)
            iterations += k
            w, z = self._line_search(X_W, w, z, target - w, grad, params)
        return w, iterations, z

    def _solve_model(self, buffer: Tensor, slots: Tensor, w: Tensor, grad: Tensor,
                     params: dict, G: Tensor | None = None
                     ) -> tuple[Tensor, int, SupportSolve | None, Tensor]:
        """``argmin_v ½vᵀGv − bᵀv + g(v)`` from ``w``, with ``G = buffer[slots][:, slots]``
        (given as ``G`` when the caller has it, else gathered from the Gram cache if the torch
        sub-solver needs it) and ``b = Gw − grad`` (the model of ``f`` at ``w``): by the
        compiled coordinate descent (``solvers.coordinate_descent``) on the CPU, by
        :func:`_active_set_then_fista` (torch) otherwise or when ``sub_solver="torch"``.
        Returns the solution, the sub-solver's iterations, the exact solve on the support that
        ended it (if one did) and ``b``."""
        penalty = self.penalty
        compiled = self._compiled(buffer, grad, w)
        if compiled is not None:
            return compiled.solve_quadratic(buffer, slots, grad, w, penalty.separable(params),
                                            self.tol, self.sub_maxiter)
        if G is None:
            G = self._cache.matrix(slots)
        linear = G @ w - grad
        return (*_active_set_then_fista(G, linear, w, penalty, params, self.tol,
                                        self.sub_maxiter), linear)

    def _gram_cache(self) -> _GramCache:
        if self._cache is None:
            self._cache = _GramCache(self.X, self._columns, self.datafit.curvature_bound())
        return self._cache

    def _rows(self) -> np.ndarray:
        """``X`` as a C-contiguous array (a copy made once if ``X`` is not contiguous)."""
        if self._X_rows is None:
            self._X_rows = np.ascontiguousarray(self.X.numpy())
        return self._X_rows

    def _targets(self) -> np.ndarray:
        return np.ascontiguousarray(self.datafit.y.numpy())

    def _compiled(self, *tensors: Tensor):
        """``solvers.coordinate_descent`` when its compiled sub-solvers can take these tensors
        (CPU, plain storage) and this penalty (``penalty.separable``), unless
        ``sub_solver="torch"``; else ``None``. Imported here, on first use: numba's import
        takes about a second."""
        if self.sub_solver == "torch" or not hasattr(self.penalty, "separable") or \
                any(t.device.type != "cpu" for t in tensors):
            return None
        from solvers import coordinate_descent

        return coordinate_descent if coordinate_descent.available(*tensors) else None

    def _line_search(self, X_W: Tensor, w: Tensor, z: Tensor, d: Tensor, grad: Tensor,
                     params: dict) -> tuple[Tensor, Tensor]:
        """Armijo backtracking on ``F(X_W w) + g(w)`` along the proximal-Newton direction."""
        datafit, penalty = self.datafit, self.penalty
        value = datafit.value(z) + penalty.value(w, params)
        decrease = float(grad @ d + penalty.value(w + d, params) - penalty.value(w, params))
        Xd = X_W @ d
        s = 1.0
        for _ in range(50):
            candidate = datafit.value(z + s * Xd) + penalty.value(w + s * d, params)
            if float(candidate) <= float(value) + 1e-4 * s * min(decrease, 0.0) + 1e-15 * abs(
                    float(value)):
                return w + s * d, z + s * Xd
            s /= 2
        return w, z


class _GramCache:
    """The columns ``X_C`` of the features visited by the working sets of a quadratic datafit
    (constant curvature ``c = F''``) and their Gram matrix ``c X_CᵀX_C``, grown by the new
    columns only: a working set that overlaps the last one (the support is always kept) costs
    ``n·|C|·|new|`` (one product) instead of ``n·|W|²``. Both live in buffers whose capacity
    doubles when full (``X_C`` is stored transposed, one row per feature, so that growing it is
    a row copy); reset to the working set when ``|C|`` would pass ``cap``.

    Args:
        X: the design matrix ``(n, p)``.
        columns: ``index ↦ X[:, index]``.
        curvature: ``c``, a number.
    """

    def __init__(self, X: Tensor, columns: Callable[[Tensor], Tensor], curvature: float):
        self._like = X[:0, 0]  # X's dtype and device
        self._n = X.shape[0]
        self._columns = columns
        self._c = curvature
        self._slot = torch.full((X.shape[1],), -1, dtype=torch.long, device=X.device)
        self._size = 0  # |C|
        self._Xt: Tensor | None = None  # rows 0..size-1: X_Cᵀ
        self._G: Tensor | None = None  # block 0..size-1: the Gram matrix
        self._last: Tensor | None = None  # the slots of the last working set
        self.col_sq = 0.0  # max ‖x_j‖² over C

    def grow(self, W: Tensor, cap: int) -> Tensor:
        """Add the columns of ``W`` not in ``C`` (resetting ``C`` to ``W`` first when ``|C|``
        would pass ``cap``); returns the slots of ``W``: ``buffer[slots][:, slots]`` is
        ``c X_WᵀX_W``."""
        slots = self._slot[W]
        new = W[slots < 0]
        k = new.numel()
        if self._size + k > cap:
            self._slot.fill_(-1)
            self._size, new, k = 0, W, W.numel()
        if k:
            size = self._size
            self._reserve(size + k)
            Xt, G = self._Xt, self._G
            Xt[size:size + k] = self._columns(new).T
            block = Xt[:size + k] @ Xt[size:size + k].T  # [X_Cᵀ x_new; X_newᵀ X_new]
            block.mul_(self._c)
            G[:size + k, size:size + k] = block
            G[size:size + k, :size] = block[:size].T
            self.col_sq = max(self.col_sq, float(block[size:].diagonal().max()) / self._c)
            self._slot[new] = torch.arange(size, size + k, device=W.device)
            self._size = size + k
            slots = self._slot[W]
        self._last = slots
        return slots

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """``(X_Cᵀ buffer, Gram buffer, slot of every feature, |C|)`` as arrays sharing the
        cache's memory (empty buffers before the first growth), for the compiled loop
        (``coordinate_descent.solve_least_squares``), which grows them and hands them back by
        :meth:`adopt`."""
        if self._Xt is None:
            empty = self._like.new_empty(0).numpy()
            return empty.reshape(0, self._n), empty.reshape(0, 0), self._slot.numpy(), 0
        return self._Xt.numpy(), self._G.numpy(), self._slot.numpy(), self._size

    def adopt(self, Xt: np.ndarray, G: np.ndarray, size: int, last: Tensor | None) -> None:
        """Take back the buffers of :meth:`arrays` as the compiled loop left them (``last``:
        the slots of its last working set, if it grew one). ``col_sq`` is not updated: the
        loop returns its own, which the solver keeps."""
        if Xt.shape[0]:
            self._Xt, self._G = torch.from_numpy(Xt), torch.from_numpy(G)
        self._size = int(size)
        if last is not None:
            self._last = last

    @property
    def buffer(self) -> Tensor:
        """The Gram matrix of ``C`` in its buffer (indexed by slots)."""
        return self._G

    def matrix(self, slots: Tensor) -> Tensor:
        """``buffer[slots][:, slots]`` (a fresh tensor)."""
        return self._G.index_select(0, slots).index_select(1, slots)

    def product(self, w_W: Tensor) -> Tensor:
        """``X_W w_W`` for the ``W`` of the last :meth:`grow` (no column gather)."""
        w_C = w_W.new_zeros(self._size)
        w_C[self._last] = w_W
        return w_C @ self._Xt[:self._size]

    def _reserve(self, size: int) -> None:
        capacity = 0 if self._Xt is None else self._Xt.shape[0]
        if size <= capacity:
            return
        capacity = max(size, 2 * capacity, 256)
        Xt = self._like.new_empty(capacity, self._n)
        G = self._like.new_empty(capacity, capacity)  # only the block of C is ever read
        if self._Xt is not None and self._size:
            old = self._size
            Xt[:old] = self._Xt[:old]
            G[:old, :old] = self._G[:old, :old]
        self._Xt, self._G = Xt, G


def _plain(params: dict) -> dict:
    """Penalty parameters with one-element tensors as Python floats: the solver's arithmetic
    runs without autograd, and a float spares every prox its tensor checks (one sync each)."""
    return {k: float(v) if isinstance(v, Tensor) and v.numel() == 1 else v
            for k, v in params.items()}


_EIGH_MAX = 96  # largest Gram matrix whose λmax is taken by eigvalsh
_ROUNDS = 8  # active-set rounds of the quadratic sub-solver before FISTA


def _active_set_then_fista(G: Tensor, b: Tensor, w: Tensor, penalty, params: dict, tol: float,
                           maxiter: int) -> tuple[Tensor, int, SupportSolve | None]:
    """``argmin_v ½vᵀGv − bᵀv + g(v)`` from ``w``. Returns the solution, the iterations
    used (active-set rounds plus FISTA iterations) and, when the solution is an exact solve
    on its support, that solve (``penalty.on_support``'s factor, for reuse).

    1. Primal-dual active-set rounds (a semismooth Newton method on the prox-gradient fixed
       point): a prox-gradient step from the current point (step ``1/max_j G_jj``) gives a
       support and signs; the exact solve on that support with those signs fixed
       (``penalty.on_support``, one Cholesky factorisation of ``G_SS``) is the next point.
       From a warm start (the last working set's solution) the support settles in a few rounds
       and the solve is exact; at most ``_ROUNDS`` rounds, stopped when a sign pattern repeats.
    2. Otherwise FISTA with restart from ``w``, finished by the same exact solve,
       tried every time the sign pattern of the iterates has just settled on one not tried
       yet (equal on two consecutive iterations) and every 10 iterations.
    """
    def solved(candidate: Tensor) -> bool:
        return float(penalty.violation(candidate, G @ candidate - b, params).max()) <= tol

    k_size = G.shape[0]
    if k_size == 0:
        return w, 0, None
    eta = 1.0 / max(float(G.diagonal().max()), 1e-300)
    x, seen = w, []
    for rounds in range(1, _ROUNDS + 1):
        x_prox = penalty.prox(x - eta * (G @ x - b), params, eta)
        pattern = torch.sign(x_prox)
        if any(torch.equal(pattern, q) for q in seen):
            break  # cycling: leave it to FISTA
        seen.append(pattern)
        exact = penalty.on_support(G, b, x_prox, params)
        x = exact.w
        if solved(x):
            return x, rounds, exact if exact.factor is not None else None
    x = w  # the warm start: the rounds may have wandered (e.g. a near-singular G_SS)
    if k_size <= _EIGH_MAX:  # exact λmax: cheaper than power iterations at this size
        lipschitz = float(torch.linalg.eigvalsh(G)[-1])
    else:
        lipschitz = _largest_eigenvalue(lambda v: G @ v, k_size, G)
    step = 1.0 / max(lipschitz, 1e-300)
    y, t = x, 1.0
    previous = tried = None
    for k in range(maxiter):
        x_new = penalty.prox(y - step * (G @ y - b), params, step)
        sign = torch.sign(x_new)
        settled = previous is not None and torch.equal(sign, previous) and (
            tried is None or not torch.equal(sign, tried))
        if settled or k % 10 == 0:
            tried = sign
            exact = penalty.on_support(G, b, x_new, params)
            if exact.factor is not None and solved(exact.w):
                return exact.w, rounds + k + 1, exact
            if solved(x_new):
                return x_new, rounds + k + 1, None
        previous = sign
        y, t = momentum(x, x_new, y, t)
        x = x_new
    return x, rounds + maxiter, None


def _solve_matrix_free(X_W: Tensor, w: Tensor, datafit, penalty, params: dict, tol: float,
                       maxiter: int) -> tuple[Tensor, int]:
    """``argmin_v F(X_W v) + g(v)`` by FISTA with restart and products by ``X_W`` only (step
    ``1/L``, ``L`` from power iterations on ``sup F'' · X_WᵀX_W``); stops on the KKT violation."""
    gram_norm = _largest_eigenvalue(lambda v: X_W.T @ (X_W @ v), X_W.shape[1], X_W)
    step = 1.0 / max(gram_norm * datafit.curvature_bound(), 1e-300)
    x, y, t = w, w, 1.0
    for k in range(maxiter):
        grad = X_W.T @ datafit.derivative(X_W @ y)
        x_new = penalty.prox(y - step * grad, params, step)
        if k % 10 == 0:
            g_new = X_W.T @ datafit.derivative(X_W @ x_new)
            if float(penalty.violation(x_new, g_new, params).max()) <= tol:
                return x_new, k + 1
        y, t = momentum(x, x_new, y, t)
        x = x_new
    return x, maxiter


def _largest_eigenvalue(matvec: Callable[[Tensor], Tensor], k: int, like: Tensor) -> float:
    """``1.05 ×`` the power-iteration estimate (20 products, fixed seed) of the largest
    eigenvalue of a PSD operator of size ``k``: the FISTA Lipschitz constant. Power iteration
    approaches it from below, hence the margin; ``k³`` eigendecompositions cost more than the
    sub-solve they serve."""
    if k == 0:
        return 1.0
    v = torch.randn(k, generator=torch.Generator().manual_seed(0), dtype=like.dtype)
    v = v.to(like.device)
    for _ in range(20):
        v = matvec(v / v.norm())
    return 1.05 * float(v.norm())


def _check_data(X: Tensor, y: Tensor) -> None:
    if not isinstance(X, Tensor) or X.ndim != 2 or not X.is_floating_point():
        raise ValueError("X must be a 2-D floating-point Tensor (n_samples, n_features)")
    if not isinstance(y, Tensor) or y.shape != (X.shape[0],):
        raise ValueError(f"y must be a Tensor of shape ({X.shape[0]},) matching X's rows, got "
                         f"{tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__}")
    if y.dtype != X.dtype or y.device != X.device:
        raise ValueError(f"y is {y.dtype} on {y.device} but X is {X.dtype} on {X.device}")
    if not bool(torch.isfinite(y).all()):
        raise ValueError("y contains NaN or Inf")
