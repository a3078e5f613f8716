"""Layers: FixedPointLayer (a small tanh DEQ cell) and ProxLayer (a Lasso layer).

FixedPointLayer: the fixed point to tolerance, gradients w.r.t. x and the cell's parameters
against central differences and a dense reference ``(I − ∂z f)⁻¹`` per sample, every adjoint
solver, training, float32, warm start, divergence. ProxLayer: the Lasso gradient against the
closed form on the support."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

import bilevel
from bilevel.layers import FixedPointLayer, ProxLayer
from solvers import prox
from tests.engine.problems import lambda_max, val_loss, wide
from tests.helpers import assert_directional

F64 = torch.float64
WIDTH, BATCH, DIM = 16, 8, 5


class Cell(nn.Module):
    """``f(z, x) = tanh(W z + U x + b)`` with ``‖W‖₂ = 0.8`` (a contraction in ``z``)."""

    def __init__(self, dtype: torch.dtype = F64, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        W = torch.randn(WIDTH, WIDTH, generator=gen, dtype=F64)
        W = 0.8 * W / torch.linalg.matrix_norm(W, 2)
        U = torch.randn(WIDTH, DIM, generator=gen, dtype=F64) / DIM**0.5
        b = 0.3 * torch.randn(WIDTH, generator=gen, dtype=F64)
        self.W = nn.Parameter(W.to(dtype))
        self.U = nn.Parameter(U.to(dtype))
        self.b = nn.Parameter(b.to(dtype))

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z @ self.W.T + x @ self.U.T + self.b)


@functools.cache
def _data(dtype: torch.dtype = F64) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, DIM, generator=gen, dtype=F64)
    target = torch.randn(BATCH, WIDTH, generator=gen, dtype=F64)
    return x.to(dtype), target.to(dtype)


def loss(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((z - _data(z.dtype)[1]) ** 2).sum()


def tight_layer(cell: nn.Module, linear_solver: str = "gmres") -> FixedPointLayer:
    adjoint = bilevel.ImplicitAdjoint(linear_solver=linear_solver, tol=1e-12)
    return FixedPointLayer(cell, tol=1e-12, maxiter=200, adjoint=adjoint, z_shape=(WIDTH,))


def dense_reference(cell: Cell, x: torch.Tensor, z: torch.Tensor
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``∇x L`` and ``∇p L`` from ``u_i = (I − ∂z f_i)⁻ᵀ ∂L/∂z_i`` (explicit per-sample
    Jacobians, a dense solve), then ``u ᵀ∂f`` by autograd of one evaluation of ``f``."""
    x, z = x.detach(), z.detach()
    v = z - _data()[1]
    eye = torch.eye(WIDTH, dtype=F64)
    jz = torch.func.vmap(torch.func.jacrev(cell))(z, x)  # (BATCH, WIDTH, WIDTH): ∂z f_i
    u = torch.linalg.solve((eye - jz).transpose(1, 2), v)
    xr = x.clone().requires_grad_(True)
    params = dict(cell.named_parameters())
    grads = torch.autograd.grad(cell(z, xr), (xr, *params.values()), u)
    return grads[0], dict(zip(params, grads[1:], strict=True))


# -- FixedPointLayer ---------------------------------------------------------------------------


def test_forward_reaches_the_fixed_point_per_sample():
    cell = Cell()
    layer = tight_layer(cell)
    x = _data()[0]
    z = layer(x)
    assert z.shape == (BATCH, WIDTH) and z.dtype == F64
    with torch.no_grad():
        rel = (z - cell(z, x)).abs().amax(1) / (1 + z.abs().amax(1))
        assert float(rel.max()) <= 1e-12
        assert layer.info.converged and layer.info.iterations > 1
        # the default tolerance (1e-4) holds too
        loose = FixedPointLayer(cell, z_shape=(WIDTH,))(x)
        rel = (loose - cell(loose, x)).abs().amax(1) / (1 + loose.abs().amax(1))
        assert float(rel.max()) <= 1e-4


def test_gradients_match_central_differences():
    cell = Cell()
    layer = tight_layer(cell)
    x = _data()[0].clone().requires_grad_(True)
    loss(layer(x)).backward()
    assert x.grad is not None and all(p.grad is not None for p in cell.parameters())

    def F_x(xx: torch.Tensor) -> float:
        with torch.no_grad():
            return float(loss(layer(xx)))

    assert_directional(x.grad, F_x, x.detach(), h=1e-5, rtol=1e-5, n_directions=2)
    for name, p in cell.named_parameters():
        p0 = p.detach().clone()

        def F_p(value: torch.Tensor, p: nn.Parameter = p) -> float:
            with torch.no_grad():
                p.copy_(value)
                out = float(loss(layer(_data()[0])))
            return out

        assert_directional(p.grad, F_p, p0, h=1e-5, rtol=1e-5, n_directions=2, seed=1)
        with torch.no_grad():
            p.copy_(p0)
        assert name


@pytest.mark.parametrize("linear_solver", ["gmres", "neumann", "bicgstab", "lu"])
def test_gradients_match_dense_reference(linear_solver):
    cell = Cell()
    layer = tight_layer(cell, linear_solver)
    x = _data()[0].clone().requires_grad_(True)
    z = layer(x)
    loss(z).backward()
    gx, gp = dense_reference(cell, x, z)
    assert torch.allclose(x.grad, gx, rtol=1e-9, atol=1e-11)
    for name, p in cell.named_parameters():
        assert torch.allclose(p.grad, gp[name], rtol=1e-9, atol=1e-11), name
    report = layer.adjoint.report
    assert report.linear_solver == linear_solver and report.linear.converged
    assert report.full_size == BATCH * WIDTH


def test_default_adjoint_is_accurate_to_its_tolerance():
    cell = Cell()
    layer = FixedPointLayer(cell, tol=1e-12, maxiter=200, z_shape=(WIDTH,))
    x = _data()[0].clone().requires_grad_(True)
    z = layer(x)
    loss(z).backward()
    gx, gp = dense_reference(cell, x, z)
    assert layer.adjoint.report.linear_solver == "gmres" and layer.adjoint.tol == 1e-3
    assert layer.adjoint.report.linear.residual <= 1e-3
    # residual ≤ 1e-3 and ‖(I − ∂z f)⁻¹‖ ≤ 1/(1 − 0.8): the gradients are within ~5e-3
    assert float((x.grad - gx).norm() / gx.norm()) <= 1e-2
    assert float((cell.W.grad - gp["W"]).norm() / gp["W"].norm()) <= 1e-2


def test_frozen_parameters_get_no_gradient():
    cell = Cell()
    cell.b.requires_grad_(False)
    layer = tight_layer(cell)
    loss(layer(_data()[0])).backward()
    assert cell.b.grad is None and cell.W.grad is not None and cell.U.grad is not None


def test_a_training_step_reduces_the_loss():
    cell = Cell()
    head = nn.Linear(WIDTH, 3).to(F64)
    layer = FixedPointLayer(cell, z_shape=(WIDTH,))
    x = _data()[0]
    labels = torch.arange(BATCH) % 3
    params = [*cell.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=1e-2)
    losses = []
    for _ in range(10):
        opt.zero_grad()
        value = nn.functional.cross_entropy(head(layer(x)), labels)
        value.backward()
        opt.step()
        losses.append(value.item())
    assert losses[-1] < 0.8 * losses[0], losses
    assert all(torch.isfinite(p).all() for p in params)


def test_float32_stays_float32_and_matches_float64():
    cell32 = Cell(torch.float32)
    layer = FixedPointLayer(cell32, tol=1e-5, z_shape=(WIDTH,))
    x = _data(torch.float32)[0].clone().requires_grad_(True)
    z = layer(x)
    assert z.dtype == torch.float32
    loss(z).backward()
    assert x.grad.dtype == torch.float32 and cell32.W.grad.dtype == torch.float32
    cell = Cell()
    x64 = _data()[0].clone().requires_grad_(True)
    z64 = tight_layer(cell)(x64)
    loss(z64).backward()
    assert torch.allclose(z.double(), z64, atol=1e-4)
    assert float((x.grad.double() - x64.grad).norm() / x64.grad.norm()) <= 1e-3
    assert float((cell32.W.grad.double() - cell.W.grad).norm() / cell.W.grad.norm()) <= 1e-3


def test_warm_start_reuses_the_last_solution_when_shapes_match():
    cell = Cell()
    layer = FixedPointLayer(cell, tol=1e-10, maxiter=200, z_shape=(WIDTH,), warm_start=True)
    x = _data()[0]
    z = layer(x)
    cold = layer.info.iterations
    z2 = layer(x)
    assert layer.info.iterations <= 1 < cold
    assert torch.allclose(z, z2, atol=1e-9)
    layer(x[:3])  # another batch size: cold start from zeros
    assert layer.info.iterations > 1
    assert FixedPointLayer(cell, z_shape=(WIDTH,))._start(x).abs().max() == 0


def test_explicit_init_and_default_z_shape():
    class Square(nn.Module):  # z has the shape of x: z = 0.5 tanh(z) + 0.5 x
        def __init__(self):
            super().__init__()
            self.a = nn.Parameter(torch.tensor(0.5, dtype=F64))

        def forward(self, z, x):
            return self.a * torch.tanh(z) + 0.5 * x

    layer = FixedPointLayer(Square(), tol=1e-12, maxiter=200)
    x = _data()[0]
    z = layer(x)
    assert z.shape == x.shape
    assert torch.allclose(layer(x, init=z), z, atol=1e-10) and layer.info.iterations <= 1


def test_divergence_error_propagates():
    class NoFixedPoint(nn.Module):  # exp(exp(z)) + c > z everywhere
        def __init__(self):
            super().__init__()
            self.c = nn.Parameter(torch.zeros(WIDTH, dtype=F64))

        def forward(self, z, x):
            return torch.exp(torch.exp(z)) + self.c + 0 * x.sum(-1, keepdim=True)

    layer = FixedPointLayer(NoFixedPoint(), z_shape=(WIDTH,))
    with pytest.raises(bilevel.DivergenceError, match="contraction"):
        layer(_data()[0])


def test_rejects_a_plain_function():
    with pytest.raises(TypeError, match="nn.Module"):
        FixedPointLayer(lambda z, x: z)  # type: ignore[arg-type]


# -- ProxLayer ---------------------------------------------------------------------------------


def test_lasso_layer_gradient_matches_closed_form_on_support():
    X, y, Xv, yv = wide()
    n, p = X.shape
    layer = ProxLayer(lambda w, t: 0.5 * ((X @ w - y) ** 2).mean(),
                      lambda v, t, s: prox.l1(v, s * t), tol=1e-12, maxiter=200_000)
    lam = torch.tensor(lambda_max(X, y) / 10, dtype=F64, requires_grad=True)
    w = layer(lam, torch.zeros(p, dtype=F64))
    val_loss(Xv, yv)(w).backward()
    S = w.detach().abs() > 0
    XS = X[:, S]
    dw = -torch.linalg.solve(XS.T @ XS / n, torch.sign(w.detach()[S]))
    ref = float((Xv.T @ (Xv @ w.detach() - yv) / Xv.shape[0])[S] @ dw)
    assert S.sum() >= 2 and layer.info.converged
    assert abs(float(lam.grad) - ref) <= 1e-8 * abs(ref)
    assert layer.adjoint.report.restricted_size == int(S.sum()) < p


@pytest.mark.parametrize("backend", ["native", "cvxpylayers"])
def test_qp_layer_broadcast_gradients_are_summed(backend):
    """One Q shared by a batch of q: its gradient is the sum of the per-item gradients."""
    from bilevel.layers import QPLayer

    gen = torch.Generator().manual_seed(0)
    n, m, batch = 4, 3, 3
    M = torch.randn(n, n, generator=gen, dtype=torch.float64)
    Q = (M @ M.T + torch.eye(n, dtype=torch.float64)).requires_grad_(True)
    q = torch.randn(batch, n, generator=gen, dtype=torch.float64, requires_grad=True)
    G = torch.randn(m, n, generator=gen, dtype=torch.float64)
    h = torch.rand(m, generator=gen, dtype=torch.float64)
    layer = QPLayer(backend)
    z = layer(Q, q, G, h)
    assert z.shape == (batch, n)
    z.sum().backward()
    total = torch.zeros_like(Q)
    for i in range(batch):
        Qi = Q.detach().clone().requires_grad_(True)
        layer(Qi, q[i].detach(), G, h).sum().backward()
        total += Qi.grad
    assert torch.allclose(Q.grad, total, rtol=1e-6, atol=1e-8)
