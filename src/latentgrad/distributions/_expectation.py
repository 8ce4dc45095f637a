"""Monte Carlo expectations whose gradient stays unbiased where the integrand jumps.

On a direct-sum (mixed) distribution ``log p(y)`` jumps between faces, so ``E_p[f(y)]`` with such
an ``f`` (entropy: ``f = −log p``; KL: ``f = log p − log q``) is not continuous along a draw
``y(θ, ε)``: the pathwise derivative misses the terms from the faces' moving boundaries (measured
on Gaussian-sparsemax at K = 2 against the closed form: ∂H/∂σ 0.049 against 0.143). The score
function needs no continuity: ``∇ E_p[f] = E[∇f] + E[(f − b) ∇ log p]`` for any baseline ``b``
independent of the draw.
"""

from __future__ import annotations

from torch import Tensor


def score_function_mean(values: Tensor, log_p: Tensor, baseline_dim: int = 0) -> Tensor:
    """Mean over dim 0 of ``values`` ``(S, ...)`` at S draws of p (held fixed: not
    reparameterised), whose gradient is unbiased: ``mean ∇values + mean (values − b) ∇ log_p``,
    ``log_p`` ``(S, ...)`` the draws' log-density (differentiable in p's parameters) and ``b`` each
    value's leave-one-out mean along ``baseline_dim``, whose entries must be independent draws:
    the S draws (0), or, for one draw per example, the examples of a batch; 0 if it has one."""
    n = values.shape[baseline_dim]
    fixed = values.detach()
    baseline = (fixed.sum(baseline_dim, keepdim=True) - fixed) / (n - 1) if n > 1 else 0.0
    surrogate = ((fixed - baseline) * log_p).mean(0)
    return values.mean(0) + (surrogate - surrogate.detach())
