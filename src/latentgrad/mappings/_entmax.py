"""alpha-entmax (Peters, Niculae & Martins, 2019): sparse, smooth maps onto the simplex.

    alpha-entmax(x) = argmax_{p in simplex} <p, x> + H^T_alpha(p),
    p_i = [(alpha - 1) x_i - tau]_+^{1 / (alpha - 1)}    (alpha > 1;  alpha -> 1 is softmax).

``entmax15`` (alpha = 1.5, ``p_i = [x_i / 2 - tau]_+^2``) never sorts full rows. Since p_i <= 1,
``tau >= max(x)/2 - 1``; Newton steps on the convex, decreasing ``f(t) = sum_i [x_i/2 - t]_+^2 - 1``
of the block maxima (a subset of each row, see ``_support.candidates``) raise that lower bound,
and the short list of entries above it is sorted for the exact threshold (``_sorted_threshold``).
When most entries are candidates, Newton's method runs on full rows instead, with after every
step the exact root of the quadratic on the current support, accepted once that support is
self-consistent (then it is the unique root). Either threshold is recomputed once on its
support from the gaps to itself, where the sums cancel least.

``entmax_bisect`` handles any alpha >= 1 by safeguarded Newton/bisection, on
``p_i = (t + (alpha - 1)(x_i - max x))_+^{1/(alpha - 1)}``: near alpha = 1 on the threshold
``nu = (1 - t)/(alpha - 1)`` in logit units (stable as alpha -> 1, softmax at alpha = 1), beyond
on ``t = p_max^(alpha - 1)`` itself, which floats hold to relative precision however small it is.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from latentgrad._dtypes import working_dtype
from latentgrad._host import host_reads_free
from latentgrad._validation import check_tensor, violated
from latentgrad.mappings._fused import FusedMapping, entmax15_kernel, entmax15_vjp_kernel
from latentgrad.mappings._rowwise import check_scores, map_rows
from latentgrad.mappings._support import Maxima, as_rows, candidates, one_thread, scatter_rows

_MAX_NEWTON_STEPS = 64
_UNCHECKED_STEPS = 2  # the support is rarely settled before this many Newton steps
_TIGHTEN_STEPS = 4  # Newton steps on the block maxima before the candidates are listed
_SORTED_UP_TO = 128  # candidate lists up to this long are sorted; longer ones iterate
_BISECT_CHECK_EVERY = 8  # off the CPU: Newton steps of entmax_bisect between convergence reads
_PAD = -4.0  # pads the candidate lists: below every threshold (2 tau >= -2 on x - max x)
_SPREAD = 4.0  # block layout for supports of a few dozen entries (``_support.block_layout``)


def _quadratic_root(t: Tensor, size: Tensor, s1: Tensor, s2: Tensor) -> tuple[Tensor, Tensor]:
    """Smaller root ``r`` of ``sum_{i in S} (z_i - r)^2 = 1`` given, for the set S, its ``size``,
    ``s1 = sum (z_i - t)`` and ``s2 = sum (z_i - t)^2``; and whether the root is real."""
    mean = s1 / size
    disc = 1.0 / size - (s2 / size - mean * mean)
    return t + mean - disc.clamp_min(0.0).sqrt(), disc >= 0


def _solve(x: Tensor, maxima: Maxima) -> tuple[Tensor, Tensor, Tensor | None]:
    """Threshold of 1.5-entmax on the rows of the (N, K) matrix ``x`` (no autograd).

    With ``z = (x - max x) / 2``, ``p = [z - tau]_+^2`` and ``tau >= -1`` (``p_max <= 1``), so
    only entries within 2 of the row maximum are candidates, fewer after ``_tighten``. The
    threshold comes from sorting the candidates (``_newton`` on long candidate lists, or on
    full rows when most entries are candidates). Returns ``tau`` (N,), ``[z - tau]_+ = sqrt(p)``
    at the candidates (N, m) with their ``columns`` (N, m), or on full rows (N, K) with
    ``columns`` ``None`` (the dense path).
    """
    found = candidates(x, maxima, 2.0, _PAD, _tighten)
    if found is None:
        z = (x - maxima.rows.unsqueeze(1)).mul_(0.5)
        if host_reads_free(z):
            tau = _newton(z, z.new_full((z.shape[0],), -1.0))
        else:  # Newton's convergence test would read on the host
            tau = _refined(z, _sorted_threshold(z))
        return tau, z.sub_(tau.unsqueeze(1)).clamp_min_(0.0), None
    with one_thread():
        z = found.values.mul_(0.5)
        if z.shape[1] <= _SORTED_UP_TO:
            tau = _refined(z, _sorted_threshold(z))
        else:
            tau = _newton(z, found.bound.squeeze(1).mul(0.5))
        return tau, z.sub_(tau.unsqueeze(1)).clamp_min_(0.0), found.columns


def _sorted_threshold(z: Tensor) -> Tensor:
    """1.5-entmax threshold (N,) of the short rows ``z`` (N, m) by sorting (Peters et al. 2019,
    Alg. 2): with ``s`` sorted decreasingly, ``tau_k`` is the smaller root of
    ``sum_{i <= k} (s_i - t)^2 = 1``, and ``tau = tau_k*`` for the number k* of k with
    ``tau_k <= s_k`` (a prefix). A fixed handful of ops (no iteration)."""
    s = z.sort(dim=1, descending=True).values
    k = torch.arange(1, z.shape[1] + 1, dtype=z.dtype, device=z.device)
    mean = s.cumsum(dim=1).div_(k)
    spread = s.square().cumsum(dim=1).div_(k).sub_(mean.square())  # mean square - squared mean
    tau = mean.sub_(spread.neg_().add_(k.reciprocal()).clamp_min_(0.0).sqrt_())
    size = torch.le(tau, s).sum(dim=1, keepdim=True)
    return tau.gather(1, size - 1).squeeze(1)


def _tighten(z: Tensor, bound: float) -> Tensor:
    """A higher lower bound (N,) on ``2 tau`` (the threshold on the shifted scale ``x - max x``),
    from a subset ``z`` (N, W) of each shifted row: Newton steps on the subset's convex,
    decreasing ``f_S(t) = sum [z / 2 - t]_+^2 - 1`` from ``t = bound / 2 <= tau_S`` stay below
    its root ``tau_S <= tau`` (a subset has less mass at any t); lowered by a rounding
    allowance."""
    t = z.new_full((z.shape[0], 1), bound)  # on the shifted scale: 2 t
    for _ in range(_TIGHTEN_STEPS):
        gap = (z - t).relu_()  # 2 [z / 2 - t / 2]_+
        excess = torch.linalg.vecdot(gap, gap, dim=1).unsqueeze(1).sub_(4.0)  # 4 f_S(t / 2)
        t = torch.addcdiv(t, excess, gap.sum(dim=1, keepdim=True), value=0.5)  # Newton, doubled
    allowance = 16 * torch.finfo(z.dtype).eps
    return t.squeeze(1).mul_(1.0 + allowance).sub_(2.0 * allowance)


def _newton(z: Tensor, t: Tensor) -> Tensor:
    """1.5-entmax threshold (N,) of the rows of ``z`` (N, m), from lower bounds ``t`` (N,).

    Newton steps on the convex, decreasing ``f(t) = sum [z - t]_+^2 - 1`` stay below tau; after
    each step past the first ``_UNCHECKED_STEPS``, the exact root on the current set ``{z > t}``
    is accepted once that set is exactly ``{z > root}``, which makes it the unique root of f,
    and recomputed from the gaps to itself (``_refined``).
    """
    t = t.unsqueeze(1)
    for step in range(_MAX_NEWTON_STEPS):
        gap = (z - t).relu_()
        s1 = gap.sum(dim=1, keepdim=True)
        s2 = gap.square().sum(dim=1, keepdim=True)
        if step >= _UNCHECKED_STEPS or step == _MAX_NEWTON_STEPS - 1:
            size = gap.sign_().sum(dim=1, keepdim=True)
            root, real = _quadratic_root(t, size, s1, s2)
            same_support = (z - root).gt_(0).sum(dim=1, keepdim=True) == size
            if bool((real & same_support).all()):
                break
        t = t + (s2 - 1.0) / (2.0 * s1)
    return _refined(z, root.squeeze(1))


def _refined(z: Tensor, tau: Tensor) -> Tensor:
    """The root of ``sum_{i in S} (z_i - r)^2 = 1`` (N,) recomputed on the support S of the
    threshold ``tau`` (N,) from sums of the gaps to ``tau`` itself. Sums of gaps to a lower
    iterate (up to 1 each, from ``t = -1`` on a dense row) leave the spread of the gaps as the
    difference of two numbers near 1, off by ~eps against ``1 / |S|``: ``sum p`` was ~600 eps
    off in float32 at K = 4096; from ``tau`` the gaps are ``sqrt(p)`` and the difference is
    exact to a few eps. (A support that changes by rounding moves entries of ``p`` ~ 0.)"""
    gap = (z - tau.unsqueeze(1)).relu_()
    s1 = gap.sum(dim=1, keepdim=True)
    s2 = gap.square().sum(dim=1, keepdim=True)
    size = gap.sign_().sum(dim=1, keepdim=True)
    return _quadratic_root(tau.unsqueeze(1), size, s1, s2)[0].squeeze(1)


def _entmax15_vjp(v: Tensor, y: Tensor, gap: Tensor, columns: Tensor | None) -> Tensor:
    """J v with J = diag(g) - g g^T / sum(g), g = sqrt(y), per row (J symmetric: VJP = JVP).

    ``gap`` is ``sqrt(y)`` on full rows (``columns`` None) or at the candidates' ``columns``
    (N, m). When the backward is itself differentiated (grad mode on), ``g`` is taken from the
    output ``y`` instead, written so that its own derivative is finite (zero off the support).
    """
    if columns is None:
        return _entmax15_jv(v, y, gap)
    with one_thread():
        y_listed = y.gather(1, columns) if torch.is_grad_enabled() else None
        jv = _entmax15_jv(v.gather(1, columns), y_listed, gap)
    return scatter_rows(jv, columns, v.shape[1])


def _entmax15_jv(v: Tensor, y: Tensor | None, gap: Tensor) -> Tensor:
    """``g v - g <g, v> / sum(g)`` per row, ``g = sqrt(y)``: ``gap`` itself, or under grad mode
    ``sqrt(y)`` with a finite derivative (zero off the support, where ``gap`` is 0); ``y`` is
    read only then (``None`` will do otherwise)."""
    if torch.is_grad_enabled():
        on = gap > 0
        g = torch.where(on, torch.where(on, y, 1.0).sqrt(), 0.0)
    else:
        g = gap
    gv = v * g
    coef = gv.sum(dim=1, keepdim=True).div_(g.sum(dim=1, keepdim=True))
    return torch.addcmul(gv, g, coef, value=-1.0)


class _Entmax15(torch.autograd.Function):
    """(N, K) rows -> 1.5-entmax rows ``gap^2``, given ``gap = [z - tau]_+`` from ``_solve`` on
    full rows (``columns`` None) or at the candidates' ``columns``. A ``forward`` with ``ctx``
    (see ``_rowwise.map_rows`` for why and for ``torch.func``)."""

    @staticmethod
    def forward(ctx, x, gap, columns):
        y = gap.square()
        output = y if columns is None else scatter_rows(y, columns, x.shape[1])
        ctx.dense = columns is None
        saved = (output, gap) if columns is None else (output, gap, columns)
        ctx.save_for_backward(*saved)
        ctx.save_for_forward(*saved)
        return output

    @staticmethod
    def backward(ctx, grad_output):
        return _entmax15_vjp(grad_output, *_saved(ctx)), None, None

    @staticmethod
    def jvp(ctx, x_tangent, *_):
        return _entmax15_vjp(x_tangent, *_saved(ctx))


def _saved(ctx) -> tuple:
    """``(y, gap, columns)`` as ``_entmax15_vjp`` takes them."""
    return (*ctx.saved_tensors, None) if ctx.dense else ctx.saved_tensors


def _entmax15_rows(x: Tensor, maxima: Maxima) -> Tensor:
    """The mapping on the (N, K) rows ``x`` with their ``maxima``; see ``map_rows``."""
    _, gap, columns = _solve(x.detach(), maxima)
    return _Entmax15.apply(x, gap, columns)


def entmax15(x: Tensor, dim: int = -1) -> Tensor:
    """1.5-entmax along ``dim``: ``p_i = [x_i / 2 - tau]_+^2`` with ``sum p = 1``.

    Args:
        x: scores (..., K, ...), float16/bfloat16/float32/float64; ``-inf`` entries get 0.
        dim: the dimension to normalise.

    Returns:
        ``p`` with ``x``'s shape and dtype. Backward is closed form: with ``g = sqrt(p)``,
        ``dx = g * dp - g * <g, dp> / sum(g)``.

    With ``use_fused_kernels()`` on, CPU rows of 128 to 4096 entries run through compiled
    kernels (the same mapping, faster after a first call that compiles); see
    ``latentgrad.mappings``.

    Raises:
        TypeError: ``x`` is not a floating tensor.
        ValueError: ``x`` has a NaN, a ``+inf``, or a row that is entirely ``-inf``.
    """
    return map_rows(x, dim, _entmax15_rows, _SPREAD, _FUSED, _entmax15_output_vjp)


def _entmax15_output_vjp(v: Tensor, y: Tensor) -> Tensor:
    """The VJP of 1.5-entmax at the output rows ``y`` (N, K), ``g = sqrt(y)``."""
    return _entmax15_jv(v, y, y.sqrt())


def _entmax15_vjp_dense(v: Tensor, y: Tensor) -> Tensor:
    """``_entmax15_jv`` at the output ``y`` (N, K) alone."""
    return _entmax15_jv(v, y, y if torch.is_grad_enabled() else y.sqrt())


_FUSED = FusedMapping(entmax15_kernel, entmax15_vjp_kernel, torch.sqrt, _entmax15_vjp_dense,
                      _entmax15_rows, _SPREAD)


# ---------------------------------------------------------------------------------------------
# alpha-entmax for any alpha >= 1
# ---------------------------------------------------------------------------------------------


def _entmax_bisect_forward(x: Tensor, alpha: Tensor, row_max: Tensor) -> Tensor:
    """alpha-entmax of the rows of the (N, K) matrix ``x`` with ``alpha`` (N, 1).

    ``p_i = 0`` whenever ``x_i - max x <= -1 / (alpha - 1)``, so for alpha > 1 the threshold search
    runs on the entries above that bound (a short list for peaked rows), laid out as a padded
    matrix; rows of alpha = 1, or flat rows, take the dense path.
    """
    k = x.shape[1]
    eps = alpha - 1.0
    reach = torch.where(eps > 0, 1.0 / torch.where(eps > 0, eps, 1.0), float("inf")).squeeze(1)
    found = candidates(x, Maxima(row_max, None), reach, float("-inf"))
    if found is None:
        return _entmax_bisect_rows(x - row_max.unsqueeze(1), eps, k)
    return scatter_rows(_entmax_bisect_rows(found.values, eps, k), found.columns, k)


def _entmax_bisect_rows(y: Tensor, eps: Tensor, k: int) -> Tensor:
    """alpha-entmax of the rows of ``y = x - max x`` (N, m) (``-inf`` allowed), eps = alpha - 1
    (N, 1), rows of true length ``k``.

    ``p_i = (t + eps y_i)_+^{1/eps}`` with ``t = p_max^eps ∈ [k^{-eps}, 1]`` (``p_max <= 1``
    gives the upper end, ``p_max >= 1/k`` the lower one), and ``sum p = 1`` fixes t. Each row
    solves for the unknown that floats hold precisely at its alpha:
    - near alpha = 1 (``k^{-eps} > 1/2``, so t > 1/2), the threshold ``nu = (1 - t)/eps`` in
      logit units, ``log p_i = log1p(eps (y_i - nu)) / eps`` (``y_i - nu`` at eps = 0, softmax);
      t itself would round at eps_machine absolute, an error eps_machine/eps in log p;
    - beyond, t itself: at large alpha it is small (k^{-eps} = 2.5e-8 at alpha = 10, k = 7) and
      ``1 + eps (y_i - nu)`` formed from nu could not resolve it (float32 rows of nearly equal
      scores had p = 0 everywhere, then 0/0); t rounds relatively, an error below
      eps_machine/(eps t) <= 2 eps_machine log(k)/log(2) in log p.
    Safeguarded Newton with a bisection bracket, to machine precision; then ``p`` is renormalised.
    """
    finite = y > float("-inf")
    y_finite = torch.where(finite, y, 0.0)
    log_k = math.log(k)
    by_t = eps * log_k >= math.log(2)  # rows solved for t; the others for nu
    positive = eps > 0
    safe_eps = torch.where(positive, eps, 1.0)
    # p rises with t and falls with nu; bracket [lo, hi] and start p_max = 1 (t = 1, nu = 0):
    # the root lies below for alpha <= 2, where the sum is convex in t; the bracket guards above
    lo = torch.where(by_t, torch.exp(-safe_eps * log_k), 0.0)
    hi = torch.where(by_t, 1.0,
                     torch.where(positive, -torch.expm1(-safe_eps * log_k) / safe_eps, log_k))
    w = torch.where(by_t, 1.0, 0.0)

    reads = host_reads_free(y)  # elsewhere: both logarithms, and a convergence read per chunk
    all_t, any_t = (bool(by_t.all()), bool(by_t.any())) if reads else (False, True)
    scaled_y = safe_eps * y_finite
    tiny = torch.finfo(y.dtype).tiny

    def p_at(w: Tensor) -> tuple[Tensor, Tensor]:
        """p (0 off the support) and d(sum p)/dw per row."""
        arg = None if all_t else scaled_y - safe_eps * w  # eps (y - nu): p^eps = 1 + arg
        base = w + scaled_y if all_t else torch.where(by_t, w + scaled_y, 1.0 + arg)  # p^eps
        inside = finite & ((base > 0) | ~positive)
        log_t = base.clamp_min(tiny).log() if any_t else None
        log_nu = None if all_t else torch.log1p(arg.clamp_min(-1.0))
        log_base = log_t if all_t else log_nu if not any_t else torch.where(by_t, log_t, log_nu)
        log_p = log_base / safe_eps if all_t else torch.where(positive, log_base / safe_eps,
                                                              y_finite - w)
        p = torch.where(inside, log_p, float("-inf")).exp()
        # dp_i/dt = p_i / (eps p_i^eps); dp_i/dnu = -p_i / p_i^eps (= -p_i at eps = 0)
        rate = (p / torch.where(positive, base, 1.0).clamp_min(tiny)).sum(dim=1, keepdim=True)
        return p, torch.where(by_t, rate / safe_eps, -rate)

    tol = 8 * torch.finfo(y.dtype).eps
    for i in range(3 * torch.finfo(y.dtype).bits):
        p, slope = p_at(w)
        excess = p.sum(dim=1, keepdim=True) - 1.0
        done = excess.abs() <= tol
        checked = reads or i % _BISECT_CHECK_EVERY == _BISECT_CHECK_EVERY - 1
        if checked and bool(done.all()):
            break
        below = by_t == (excess > 0)  # the root lies below w
        lo = torch.where(below, lo, w)
        hi = torch.where(below, w, hi)
        step = w - excess / slope
        new_w = torch.where((step >= lo) & (step <= hi), step, (lo + hi) / 2)
        new_w = torch.where(done, w, new_w)  # converged rows stay put
        if reads and torch.equal(new_w, w):
            break
        w = new_w
    p = p_at(w)[0]
    return p / p.sum(dim=1, keepdim=True)


def _entmax_bisect_jacobian(y: Tensor, alpha: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The Jacobian of alpha-entmax at the output rows ``y`` (N, K), alpha (N, 1), in parts:
    ``(g, h, dp_dalpha)`` with ``dp/dx = diag(g) - g h^T`` (symmetric: ``h = g / sum(g)``) and
    ``dp/dalpha`` (N, K).

    With ``g = p^{2 - alpha}`` on the support:
    ``dp/dalpha = (p - h) / (alpha - 1)^2 - (p log p - h <p, log p>) / (alpha - 1)``, whose
    limit at alpha = 1 is ``-(p / 2) (log^2 p - <p, log^2 p>)``; it is used for
    ``alpha - 1 < eps_machine^{1/3}``, where the exact form cancels catastrophically.

    ``h`` is normalised from ``log g`` (shifted by its row maximum), so it stays finite where
    ``g`` itself overflows (alpha > 2 and small ``p``: ``3^98`` at alpha = 100 on a flat row of 3).
    """
    dim = 1
    eps = alpha - 1.0
    support = y > 0
    log_y = torch.where(support, y, 1.0).log()
    log_g = torch.where(support, (1.0 - eps) * log_y, float("-inf"))
    g = log_g.exp()
    h = (log_g - log_g.amax(dim=dim, keepdim=True)).exp()
    h = h / h.sum(dim=dim, keepdim=True)
    p_log_p = torch.where(support, y * log_y, 0.0)
    neg_entropy = p_log_p.sum(dim=dim, keepdim=True)
    small = eps < torch.finfo(y.dtype).eps ** (1.0 / 3.0)
    safe_eps = torch.where(small, 1.0, eps)
    exact = (y - h) / safe_eps**2 - (p_log_p - h * neg_entropy) / safe_eps
    p_log2_p = p_log_p * log_y
    limit = -0.5 * (p_log2_p - y * p_log2_p.sum(dim=dim, keepdim=True))
    return g, h, torch.where(small, limit, exact)


def _times_x_jacobian(g: Tensor, h: Tensor, v: Tensor) -> Tensor:
    """``(diag(g) - g h^T) v`` per row (= ``v^T`` times it: symmetric); where ``g`` overflowed,
    ``±inf`` (the rounding of a value beyond the dtype's range), and exactly 0 where
    ``v_i = <h, v>`` (not ``inf - inf`` or ``inf * 0``)."""
    centred = v - (h * v).sum(dim=1, keepdim=True)
    return torch.where(centred == 0, 0.0, g * centred)


def _entmax_bisect_backward(y: Tensor, alpha: Tensor, grad: Tensor) -> tuple[Tensor, Tensor]:
    """VJPs in x (N, K) and alpha (N, 1) at the output rows ``y`` (N, K) (see
    ``_entmax_bisect_jacobian``)."""
    g, h, dp_dalpha = _entmax_bisect_jacobian(y, alpha)
    return _times_x_jacobian(g, h, grad), (grad * dp_dalpha).sum(dim=1, keepdim=True)


class _EntmaxBisect(torch.autograd.Function):
    """(N, K) rows and alpha (N, 1) -> alpha-entmax rows."""

    @staticmethod
    def forward(x, alpha, row_max):
        return _entmax_bisect_forward(x, alpha, row_max)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, alpha, _ = inputs
        ctx.save_for_backward(output, alpha)
        ctx.save_for_forward(output, alpha)

    @staticmethod
    def backward(ctx, grad_output):
        y, alpha = ctx.saved_tensors
        dx, dalpha = _entmax_bisect_backward(y, alpha, grad_output)
        return dx, dalpha, None

    @staticmethod
    def jvp(ctx, x_tangent, alpha_tangent, _):
        y, alpha = ctx.saved_tensors
        g, h, dp_dalpha = _entmax_bisect_jacobian(y, alpha)
        out = _times_x_jacobian(g, h, x_tangent) if x_tangent is not None else torch.zeros_like(y)
        return out if alpha_tangent is None else out + dp_dalpha * alpha_tangent


def entmax_bisect(x: Tensor, alpha: Tensor | float = 1.5, dim: int = -1) -> Tensor:
    """alpha-entmax along ``dim`` for any ``alpha >= 1``, differentiable in ``x`` and ``alpha``.

    ``p_i = [(alpha - 1) x_i - tau]_+^{1/(alpha - 1)}`` with ``sum p = 1``; alpha = 1 is softmax,
    alpha = 2 is sparsemax. The threshold is solved to machine precision (safeguarded Newton with
    a bisection bracket), then ``p`` is renormalised.

    Args:
        x: scores (..., K, ...), float16/bfloat16/float32/float64; ``-inf`` entries get 0.
        alpha: a float, or a floating tensor broadcastable to ``x``'s shape with size 1 along
            ``dim`` (one alpha per row), all entries ``>= 1``.
        dim: the dimension to normalise.

    Returns:
        ``p`` with ``x``'s shape and dtype. Backward and forward mode (``torch.func.jvp``) are
        closed form in ``x`` and ``alpha`` (see ``_entmax_bisect_jacobian``).

    Raises:
        TypeError: ``x`` or ``alpha`` has the wrong type.
        ValueError: bad scores (as in ``sparsemax``), ``alpha < 1`` or NaN, or an ``alpha`` shape
            that is not one value per row.
    """
    x, dim = check_scores(x, dim)
    dtype = working_dtype(x.dtype)
    row_shape = (*x.shape[:dim], 1, *x.shape[dim + 1 :])
    if isinstance(alpha, Tensor):
        check_tensor(alpha, "alpha")
        try:
            shape = torch.broadcast_shapes(alpha.shape, row_shape)
        except RuntimeError:
            shape = None
        if shape != row_shape:
            raise ValueError(
                f"alpha must broadcast to one value per row, i.e. to shape {tuple(row_shape)} "
                f"for x of shape {tuple(x.shape)} and dim={dim}; got shape {tuple(alpha.shape)}"
            )
        if violated(alpha, lambda a: (a >= 1) & torch.isfinite(a)):
            raise ValueError("alpha must be finite and >= 1 everywhere (got a NaN, inf or < 1)")
        alpha_t = alpha.to(device=x.device, dtype=dtype)
    elif isinstance(alpha, (int, float)) and not isinstance(alpha, bool):
        if not alpha >= 1 or alpha == float("inf"):
            raise ValueError(f"alpha must be a finite number >= 1, got {alpha}")
        alpha_t = torch.full((), float(alpha), device=x.device, dtype=dtype)
    else:
        raise TypeError(f"alpha must be a float or a floating tensor, got {type(alpha).__name__}")
    alpha_rows = as_rows(alpha_t.expand(row_shape), dim)
    return map_rows(x, dim, lambda rows, maxima: _EntmaxBisect.apply(rows, alpha_rows, maxima.rows))
