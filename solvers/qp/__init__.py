"""Differentiable convex QPs: the shared KKT mapping and the solver backends.

``NativeQP`` (batched interior point in pure torch) is imported eagerly; the cvxpylayers backend
lives in ``solvers.qp.cvxpylayers_backend`` and is imported on demand (it pulls in cvxpy).
"""

from solvers.qp.kkt import QPParams, as_params, kkt_mapping, kkt_structure
from solvers.qp.native import STATUS, NativeQP, QPStatusWarning

__all__ = ["STATUS", "NativeQP", "QPParams", "QPStatusWarning", "as_params", "kkt_mapping",
           "kkt_structure"]
