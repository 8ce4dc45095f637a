"""The pathwise surrogate shared by the one-sample relaxations (Gumbel-Softmax, IGR, SST).

Each example gets ONE relaxed (or straight-through) sample ``z_b``, all evaluated in one
``loss_fn`` call; the loss is ``mean_b [ℓ_b(z_b) + kl_coeff·KL_b − entropy_coeff·H_b]``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import (
    Deferred,
    Estimator,
    EstimatorOutput,
    LossFn,
    add_term,
    batch_mean,
    call_loss_fn,
    detached,
    filled,
    fixed_support_output,
    sum_latent,
)


def one_sample_output(
    est: Estimator,
    loss_fn: LossFn,
    z: Tensor,
    tau: Tensor | None,
    entropy: Tensor | Deferred | None,
    kl: Tensor | None = None,
    kl_coeff: float = 0.0,
    logs: dict[str, float | Tensor] | None = None,
) -> EstimatorOutput:
    """Evaluate ``z`` ``(B, ...)`` in one ``loss_fn`` call and return the surrogate
    ``mean_b [ℓ_b + kl_coeff·KL_b − est.entropy_coeff·H_b]``.

    ``entropy`` and ``kl`` ``(B, *latent)`` are summed over the latent variables (``entropy=None``:
    0, in the losses' dtype; a ``Deferred`` entropy, already summed, is not in the loss); terms
    wider than ``z`` (float64 relaxed densities) enter the loss and its mean in their dtype, which
    is then rounded to that of ``ℓ`` and ``z``, and the entropy is reported in ``z``'s dtype;
    ``expected_loss`` is ``ℓ_b``, ``support_size`` 1; logs ``temperature`` ``tau`` (unless None),
    ``entropy``, ``support_size``, with a KL ``kl`` (means), and the extra ``logs``. Also the
    eval-mode reading at the mode (``z`` without a graph).
    """
    rows = torch.arange(z.shape[0], device=z.device)
    losses = call_loss_fn(loss_fn, z, rows, type(est).__name__)
    if entropy is None:
        entropy = torch.zeros_like(losses)
    elif not isinstance(entropy, Deferred):
        entropy = sum_latent(entropy)
    loss_b = add_term(losses, -est.entropy_coeff, entropy)
    if not isinstance(entropy, Deferred):
        entropy = entropy.to(z.dtype)
    all_logs: dict[str, float | Tensor] = {} if tau is None else {"temperature": detached(tau)}
    means: dict[str, Tensor] = {}
    if kl is not None:
        means["kl"] = kl = sum_latent(kl)
        loss_b = add_term(loss_b, kl_coeff, kl)
    out = fixed_support_output(
        batch_mean(loss_b).to(torch.promote_types(losses.dtype, z.dtype)), losses, entropy, 1,
        {**all_logs, **(logs or {})}, means
    )
    weights = Deferred(filled, (losses.shape[0],), 1.0, losses.dtype, losses.device)
    return out.evaluated(z, rows, weights)
