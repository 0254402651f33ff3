r"""Batched, masked entropic optimal transport and the OPTICAL distillation loss.

OPTICAL (Huang, Yu & Allan, WSDM 2023, arXiv 2301.12566) distils a frozen monolingual
retrieval teacher into a cross-lingual student by aligning their token states with
entropic optimal transport: for each bitext pair and layer, the cost between teacher
token ``i`` and student token ``j`` is ``C_ij`` (cosine distance by default), the plan

.. math::
    P^\star = \arg\min_{P \ge 0,\ P 1 = a,\ P^T 1 = b}
        \langle P, C \rangle_F - \varepsilon H(P),
    \qquad H(P) = -\sum_{ij} P_{ij} (\log P_{ij} - 1),

has uniform marginals ``a``, ``b`` over the real (unmasked) tokens, and the loss is
``<P*, C>``. ``P*`` is found by Sinkhorn's algorithm (Cuturi 2013, "Sinkhorn distances:
lightspeed computation of optimal transport"), stabilised by absorbing the scalings
into dual potentials (Schmitzer 2019, "Stabilized sparse scaling algorithms for entropy
regularized transport problems") and over-relaxed (Thibault et al. 2021, "Overrelaxed
Sinkhorn-Knopp algorithm for regularized optimal transport"; Lehmann et al. 2022, "A
note on overrelaxation in the Sinkhorn algorithm"), so it is fast (kernel-domain
matrix-vector products, few iterations) and safe for any ``eps`` in fp32. Conventions
(the entropy above, ``reg`` = ``eps``) are those of POT's ``ot.sinkhorn``, so plans
agree with it.

The gradient of the loss with respect to the cost is ``P*`` (envelope theorem, exact at
convergence): the plan is solved without autograd and the loss is
``<P*.detach(), C>``, so no backward pass runs through the Sinkhorn iterations.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "COSTS",
    "SINKHORN_METHODS",
    "SinkhornConvergenceWarning",
    "SinkhornResult",
    "converges_within",
    "cost_matrix",
    "full_precision",
    "iterations_needed",
    "min_epsilon",
    "normalize_layer_weights",
    "ot_distillation_loss",
    "sinkhorn",
]

SINKHORN_METHODS = ("auto", "log", "kernel")
COSTS = ("cosine", "sqeuclidean")

# Scalings u, v are folded into the potentials once |log u| or |log v| exceeds this:
# products u_i K_ij v_j then stay far from fp32 overflow (e^88), and kernel entries
# flushed to zero (K < e^-103) carry at most e^-103 * e^(2*25) ~ 1e-23 of mass.
_ABSORB_LOG_SCALE = 25.0
# Denominators of the scaling updates are floored here, so a column whose kernel
# underflowed to zero between two absorptions yields a large finite scaling, not inf/NaN.
_FLOOR = 1e-30
# Lower clamp of exp arguments; see _exp.
_EXP_MIN = -80.0
# Kernel iterations per intermediate eps_scaling stage, after the exact log-domain
# iteration that moves the potentials to the stage's eps (3 was within ~10% of the
# best of 0, 1, 3, 10 and adaptive stage tolerances for eps in 1e-4..1e-2).
_STAGE_ITERS = 3
# Cap of the over-relaxation factor (plain Sinkhorn is 1, divergence at 2); halved
# towards 1 for a pair each time a relaxed block has to be undone.
_OMEGA = 1.9
# method="kernel" refuses problems whose kernel exp(-(C - min C)/eps) spans more than
# e^-50: its entries and the scalings that compensate them approach the fp32 range.
_KERNEL_MAX_EXPONENT = 50.0


class SinkhornConvergenceWarning(UserWarning):
    """Sinkhorn stopped at ``max_iter`` with a marginal error above ``tol``.

    Carries the figures a training loop records per step (read them from the caught
    warning's ``message``, which is this instance).

    Attributes
    ----------
    marginal_error : float
        Worst L1 marginal error over the batch when the solver stopped.
    iterations : int
        Iterations run (``== max_iter``).
    epsilon : float
        The entropic regularisation asked for.
    tol : float
        The tolerance that was not reached.
    max_iter : int
        The iteration budget.
    unconverged : int
        Pairs of the batch (layers included) whose error is above ``tol``.
    """

    def __init__(
        self,
        message: str,
        marginal_error: float = math.nan,
        iterations: int = 0,
        epsilon: float = math.nan,
        tol: float = math.nan,
        max_iter: int = 0,
        unconverged: int = 0,
    ) -> None:
        super().__init__(message)
        self.marginal_error = float(marginal_error)
        self.iterations = int(iterations)
        self.epsilon = float(epsilon)
        self.tol = float(tol)
        self.max_iter = int(max_iter)
        self.unconverged = int(unconverged)

    def __reduce__(self):
        # Exceptions pickle as cls(*args); keep the figures when a warning crosses
        # processes (Ray workers).
        return (
            type(self),
            (
                str(self),
                self.marginal_error,
                self.iterations,
                self.epsilon,
                self.tol,
                self.max_iter,
                self.unconverged,
            ),
        )


@dataclass
class SinkhornResult:
    """Output of :func:`sinkhorn`.

    Attributes
    ----------
    plan : Tensor, shape [batch, n, m]
        Transport plans, float32 (float64 when the cost was float64); total mass 1 per
        pair, exactly 0 on padded rows and columns.
    n_iter : int
        Sinkhorn iterations run (one iteration = a column update and a row update).
    marginal_error : Tensor, shape [batch]
        L1 error of the column marginal, ``sum_j |(P^T 1)_j - b_j|``; the row marginal
        is exact (the last update was a row update).
    converged : bool
        Every pair's ``marginal_error <= tol`` (True when ``tol`` is None: a fixed
        iteration count was asked for).
    """

    plan: Tensor
    n_iter: int
    marginal_error: Tensor
    converged: bool


# Iterations of method="auto" to reach tol <= 1e-3 are at most
# _BUDGET_FLOOR + _ITERS_PER_RANGE * (cost range) / eps: measured n_iter * eps / range
# <= 5.6 (above the two-check floor) on cosine costs of MiniLM token states (MAFAND
# en-swa/en-hau, layers -1/-2: <= 1.4), of bench_ot's aligned states (batch 16-64,
# 32 x 64..180 tokens: <= 5.6) and of random states, for eps in 1e-3..1.
_ITERS_PER_RANGE = 6.0
_BUDGET_FLOOR = 20
# Cost range max - min over the real entries that the predicates assume by default:
# cosine costs of transformer token states measured 0.8-1.3 (the bound is 2).
_COST_RANGE = 1.25


def iterations_needed(epsilon: float, tol: float = 1e-3, cost_range: float = _COST_RANGE) -> int:
    r"""Iteration budget with which :func:`sinkhorn` (``method="auto"``) reaches ``tol``.

    .. math::
        N(\varepsilon) = 20 + \left\lceil 6\, \frac{R}{\varepsilon}\,
            \max\!\left(1, \Big(\frac{\log(1/\mathrm{tol})}{\log 10^3}\Big)^2\right)
        \right\rceil

    with ``R`` the cost range (max - min over real entries). An empirical, conservative
    bound, not a theorem: at ``tol=1e-3`` the measured iterations were at most
    ``20 + 5.6 R / eps`` over MiniLM token states, bench_ot's aligned states and random
    states (eps 1e-3..1, cosine and squared-L2 costs; tests/test_ot.py re-checks it on
    random cosine costs). Iterations grow like ``1/eps`` because the potentials must
    travel ~``R`` in steps of ~``eps``; neither eps scaling nor a Newton step shortened
    that on these costs (see :func:`sinkhorn`).

    Parameters
    ----------
    epsilon : float
        Entropic regularisation, > 0.
    tol : float
        L1 marginal-error tolerance, > 0.
    cost_range : float
        ``max C - min C`` over real entries; the default 1.25 covers cosine costs of
        transformer token states (measured 0.8-1.3); pass 2.0 for any cosine cost.

    Returns
    -------
    int
    """
    _check_eps(epsilon, "epsilon")
    _check_eps(tol, "tol")
    _check_eps(cost_range, "cost_range")
    return _BUDGET_FLOOR + math.ceil(_ITERS_PER_RANGE * cost_range / epsilon * _tol_factor(tol))


def _tol_factor(tol: float) -> float:
    """Budget factor for ``tol`` below 1e-3: 1.78 at 1e-4, where the measured solves took
    at most 0.87 of the resulting budget (aligned states, eps=0.03: 261 of 301)."""
    return max(1.0, (math.log(1.0 / tol) / math.log(1e3)) ** 2)


def converges_within(
    epsilon: float, max_iter: int, tol: float = 1e-3, cost_range: float = _COST_RANGE
) -> bool:
    """Whether ``max_iter`` iterations suffice at ``epsilon`` (see :func:`iterations_needed`).

    Pure and cheap (no solve): a sweep can call it on its epsilon range before it starts.
    """
    return iterations_needed(epsilon, tol, cost_range) <= max_iter


def min_epsilon(max_iter: int, tol: float = 1e-3, cost_range: float = _COST_RANGE) -> float:
    """Smallest epsilon for which :func:`converges_within` holds with ``max_iter``.

    ``math.inf`` when ``max_iter`` is at most the floor of 20 (no epsilon qualifies).
    """
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be an int >= 1, got {max_iter!r}")
    if max_iter <= _BUDGET_FLOOR:
        return math.inf
    _check_eps(tol, "tol")
    _check_eps(cost_range, "cost_range")
    eps = _ITERS_PER_RANGE * cost_range * _tol_factor(tol) / (max_iter - _BUDGET_FLOOR)
    # the ceil in iterations_needed: nudge up until the predicate holds
    while not converges_within(eps, max_iter, tol, cost_range):
        eps *= 1.0 + 1e-9
    return eps


@contextlib.contextmanager
def full_precision(device: torch.device) -> Iterator[None]:
    """Switch autocast off on ``device`` for the block (a no-op when it is off).

    Under bf16/fp16 autocast, ``bmm`` and ``baddbmm`` run in the half dtype whatever
    their inputs: a cost ``1 - cos`` computed there has a resolution of ~4e-3 in bf16,
    as coarse as the smallest useful eps, and Sinkhorn's updates would lose the
    marginals. The OT cost, the solver and the loss's inner product run in float32.
    """
    if torch.is_autocast_enabled(device.type):
        with torch.autocast(device.type, enabled=False):
            yield
    else:
        yield


def sinkhorn(
    cost: Tensor,
    row_mask: Tensor | None = None,
    col_mask: Tensor | None = None,
    eps: float = 0.05,
    *,
    max_iter: int = 1000,
    tol: float | None = 1e-3,
    check_every: int = 10,
    method: str = "auto",
    eps_scaling: float | None = None,
) -> SinkhornResult:
    r"""Solve a padded batch of entropic OT problems with uniform marginals.

    .. math::
        P^\star_b = \arg\min_{P \ge 0,\ P 1 = a_b,\ P^T 1 = b_b}
            \langle P, C_b \rangle_F - \varepsilon H(P),
        \qquad H(P) = -\sum_{ij} P_{ij} (\log P_{ij} - 1),

    where ``a_b = 1/n_real`` on real rows and 0 on padded rows (``b_b`` likewise). The
    solution is ``P_ij = exp((f_i + g_j - C_ij) / eps)`` for dual potentials ``f, g``
    (POT's ``ot.sinkhorn(a, b, C, reg=eps)`` solves the same problem).

    Parameters
    ----------
    cost : Tensor, shape [batch, n, m]
        Cost matrices, padded; any float dtype (computed in float32, or float64 when
        given float64). Values at padded positions are ignored.
    row_mask, col_mask : Tensor, shape [batch, n] / [batch, m], optional
        True (or 1) for real tokens; None means all real. Every pair needs one real
        row and one real column.
    eps : float
        Entropic regularisation, > 0, in the units of the cost.
    max_iter : int
        Maximum number of iterations (all ``eps_scaling`` stages included); at small
        eps see :func:`iterations_needed` (eps=1e-3 may need thousands).
    tol : float or None
        Stop once every pair's L1 marginal error is ``<= tol``; None runs exactly
        ``max_iter`` iterations.
    check_every : int
        Iterations between convergence checks (each check synchronises with the
        device once).
    method : {"auto", "log", "kernel"}
        ``"auto"``, fast and safe for any eps: kernel-domain iterations (two batched
        matvecs each) on the stabilised kernel ``K~ = exp((f_i + g_j - C_ij)/eps)``.
        It starts from one log-domain half step, so every kernel row sums to ``a_i``
        and no row underflows, whatever eps. At each check, scalings with
        ``|log u|`` or ``|log v|`` above 25 are absorbed into ``f, g`` by one exact
        log-domain iteration that rebuilds ``K~`` and revives underflowed columns
        (Schmitzer 2019); between checks, floored denominators keep all values
        finite. After a first plain block, each pair is over-relaxed by a factor in
        [1, 1.9] set from its observed error decay (Young's SOR relation, Lehmann et
        al. 2022); a relaxed block that lowered the pair's dual objective (or went
        non-finite) is undone and its cap halved, so plain Sinkhorn's guarantees
        remain. Why this choice: a kernel iteration costs two matvecs where a
        log-domain one costs two full ``exp`` passes (~10x more); absorption costs
        one log iteration and, for cosine costs with eps >= ~0.03, never happens;
        relaxation cuts iterations 2-8x for eps <= 0.05 (180 -> 50 at eps=0.05,
        32 x 180 tokens). ``"log"``: plain log-domain iterations; safe, slow, the
        reference. ``"kernel"``: plain Sinkhorn-Knopp on ``exp(-(C - min C)/eps)``;
        raises ValueError when ``(max C - min C)/eps > 50`` (fp32 underflow).
    eps_scaling : float in (0, 1), optional
        Epsilon scaling: solve first at eps = the cost range (max - min over real
        entries), then multiply eps by ``eps_scaling`` per stage down to ``eps``,
        warm-starting the potentials; each intermediate stage runs one exact
        log-domain iteration and 3 kernel iterations (counted in ``n_iter``). Off by
        default: with over-relaxation on it does not pay (``eps_scaling=0.5``, tol
        1e-3, 16 pairs, one thread; iterations and time without -> with): MiniLM
        token states, en-swa, 45 x 87 tokens, eps=1e-3: 1120 -> 2334 (370 -> 895 ms),
        eps=0.01: 130 -> 248; en-hau, 91 x 169, eps=1e-3: 770 -> 614 (567 -> 550 ms);
        bench_ot's aligned states, 32 x 180, eps=1e-3: 4050 -> 3730 (1.86 -> 2.06 s),
        eps=0.01: 300 -> 338. Not for ``method="kernel"``.

    Notes
    -----
    Budget. Iterations to reach ``tol=1e-3`` grow like ``R / eps`` (``R`` the cost
    range): the potentials must travel ~``R`` in steps of ~``eps``. Measured
    ``n_iter * eps / R`` (tol 1e-3, eps 1e-3..0.03): 0.6-1.4 on MiniLM token states,
    1.8-5.6 on bench_ot's aligned states, 0.4-1.4 on random states; so eps=1e-3
    needs ~1000-4000 iterations, eps=0.01 ~120-300. :func:`iterations_needed` turns
    this into a conservative budget and :func:`converges_within` /
    :func:`min_epsilon` into a check a sweep can run before it starts. Alternatives
    measured and rejected: eps scaling (above); over-relaxation cap 1.97 instead of
    1.9 (-10% iterations on aligned states, +15% on MiniLM en-swa at eps=0.01);
    convergence checks every 5 or 20 iterations instead of 10 (both worse); a
    Sinkhorn-Newton step on the semi-dual (Brauer et al. 2017; Schur complement as
    a graph Laplacian, float64 Cholesky, damped): far from the optimum its steps are
    cut to ~eps along near-null directions, so at eps=1e-3 it had not reached 1e-3
    after 200 steps and at eps=0.01 it took 2-5x the time of the iterations here.

    Returns
    -------
    SinkhornResult
        ``plan`` [batch, n, m], ``n_iter``, ``marginal_error`` [batch], ``converged``.

    Warns
    -----
    SinkhornConvergenceWarning
        ``tol`` was not reached within ``max_iter`` iterations.
    """
    _check_eps(eps, "eps")
    if method not in SINKHORN_METHODS:
        raise ValueError(
            f"method={method!r} is not supported; allowed: {', '.join(SINKHORN_METHODS)}"
        )
    if not isinstance(cost, Tensor) or cost.dim() != 3 or not cost.is_floating_point():
        shape = tuple(cost.shape) if isinstance(cost, Tensor) else type(cost).__name__
        raise ValueError(f"cost must be a float tensor of shape [batch, n, m], got {shape}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be an int >= 1, got {max_iter!r}")
    if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
        raise ValueError(f"check_every must be an int >= 1, got {check_every!r}")
    if tol is not None and not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol > 0):
        raise ValueError(f"tol must be a finite float > 0 or None, got {tol!r}")
    if eps_scaling is not None:
        if not (isinstance(eps_scaling, (int, float)) and 0 < eps_scaling < 1):
            raise ValueError(f"eps_scaling must be a float in (0, 1) or None, got {eps_scaling!r}")
        if method == "kernel":
            raise ValueError("eps_scaling needs method='auto' or 'log', not 'kernel'")
    batch, n, m = cost.shape
    row_mask = _as_mask(row_mask, "row_mask", (batch, n), cost.device)
    col_mask = _as_mask(col_mask, "col_mask", (batch, m), cost.device)
    dtype = torch.float64 if cost.dtype == torch.float64 else torch.float32

    with torch.no_grad(), full_precision(cost.device):
        pair_mask = row_mask[:, :, None] & col_mask[:, None, :]  # [batch, n, m]
        c = cost.detach().to(dtype).masked_fill(~pair_mask, 0.0)  # [batch, n, m]
        a = row_mask.to(dtype) / row_mask.sum(-1, keepdim=True)  # [batch, n]
        b = col_mask.to(dtype) / col_mask.sum(-1, keepdim=True)  # [batch, m]
        c_min = c_max = None
        if method == "kernel" or eps_scaling is not None:
            c_min = c.masked_fill(~pair_mask, math.inf).amin((1, 2))  # [batch]
            c_max = c.masked_fill(~pair_mask, -math.inf).amax((1, 2))  # [batch]
        eps = float(eps)
        epsilons = [eps]
        if eps_scaling is not None:
            stage_eps = float((c_max - c_min).max())
            while stage_eps > eps:
                epsilons.insert(-1, stage_eps)
                stage_eps *= eps_scaling
        if method == "log":
            plan, n_iter, err = _sinkhorn_log(
                c, a, b, col_mask, epsilons, max_iter, tol, check_every
            )
        else:
            if method == "kernel":
                spread = (c_max - c_min) / eps  # [batch]
                worst = int(spread.argmax())
                if spread[worst] > _KERNEL_MAX_EXPONENT:
                    raise ValueError(
                        f"method='kernel' would underflow in float32: (max cost - min cost)/eps = "
                        f"{float(spread[worst]):.1f} > {_KERNEL_MAX_EXPONENT:g} for pair {worst}; "
                        f"use method='auto' (stabilised) or 'log', or increase eps (now {eps})"
                    )
            plan, n_iter, err = _sinkhorn_scaling(
                c, a, b, c_min, epsilons, max_iter, tol, check_every, stabilised=method == "auto"
            )
    converged = tol is None or bool(err.max() <= tol)
    if not converged:
        worst = float(err.max())
        spread = float(
            (
                c.masked_fill(~pair_mask, -math.inf).amax((1, 2))
                - c.masked_fill(~pair_mask, math.inf).amin((1, 2))
            ).max()
        )
        if not math.isfinite(spread):
            raise ValueError(
                "cost holds inf or NaN entries on real tokens; Sinkhorn needs finite costs"
            )
        need = iterations_needed(eps, tol, max(spread, 1e-6))
        warnings.warn(
            SinkhornConvergenceWarning(
                f"Sinkhorn did not converge: marginal error {worst:.2e} > tol={tol} after "
                f"{n_iter} iterations; increase max_iter (now {max_iter}; up to {need} may be "
                f"needed at this eps for costs spanning {spread:.2f}) or eps (now {eps})",
                marginal_error=worst,
                iterations=n_iter,
                epsilon=eps,
                tol=tol,
                max_iter=max_iter,
                unconverged=int((err > tol).sum()),
            ),
            stacklevel=2,
        )
    return SinkhornResult(plan=plan, n_iter=n_iter, marginal_error=err, converged=converged)


def _exp(z: Tensor) -> Tensor:
    """In-place ``exp`` of arguments <= 0, with those below ``_EXP_MIN`` raised to it.

    torch's vectorised ``exp`` takes a ~20-70x slower path for fp32 arguments below the
    underflow threshold (-87.3), which small eps produces in bulk. Raising them to -80
    changes entries smaller than e^-80 ~ 2e-35 (relative to the row or column maximum,
    which the callers have subtracted), far below any tolerance; callers restore the
    exact zeros of padding with the masks.
    """
    return z.clamp_(min=_EXP_MIN).exp_()


def _lse(z: Tensor, dim: int) -> Tensor:
    """``logsumexp`` over ``dim``, consuming ``z`` (overwritten), via :func:`_exp`."""
    z_max = z.amax(dim, keepdim=True)  # finite: every row and column has a real entry
    return z_max.squeeze(dim) + _exp(z.sub_(z_max)).sum(dim).log()


def _log_row_step(
    c: Tensor, g: Tensor, a: Tensor, col_real: Tensor, eps: float
) -> tuple[Tensor, Tensor]:
    """Exact row update in the log domain; returns ``f`` and the kernel it makes.

    ``f_i = eps log a_i - eps LSE_j((g_j - C_ij)/eps)`` and
    ``K~_ij = exp((f_i + g_j - C_ij)/eps)``, whose rows sum to ``a_i``, from a single
    ``exp`` pass (the one inside the logsumexp). ``col_real`` [batch, 1, m] is 1 on real
    columns, 0 on padding.
    """
    z = (g[:, None, :] - c).div_(eps)  # [batch, n, m]; -inf on padded columns
    z_max = z.amax(-1, keepdim=True)  # [batch, n, 1]; finite: every row has a real column
    kern = _exp(z.sub_(z_max)).mul_(col_real)  # [batch, n, m]; in [0, 1], row max exactly 1
    row_sum = kern.sum(-1, keepdim=True)  # [batch, n, 1]; >= 1
    kern.mul_(a[:, :, None] / row_sum)
    f = eps * (
        a.log() - z_max.squeeze(-1) - row_sum.squeeze(-1).log()
    )  # [batch, n]; -inf on padding
    return f, kern


def _log_col_step(c: Tensor, f: Tensor, b: Tensor, eps: float) -> Tensor:
    """Exact log-domain column update ``g_j = eps log b_j - eps LSE_i((f_i - C_ij)/eps)``."""
    z = (f[:, :, None] - c).div_(eps)  # [batch, n, m]; -inf on padded rows
    return eps * (b.log() - _lse(z, dim=1))  # [batch, m]; -inf on padding


def _sinkhorn_scaling(
    c: Tensor,
    a: Tensor,
    b: Tensor,
    c_min: Tensor | None,
    epsilons: list[float],
    max_iter: int,
    tol: float | None,
    check_every: int,
    stabilised: bool,
) -> tuple[Tensor, int, Tensor]:
    """Kernel-domain Sinkhorn: plain, or stabilised and over-relaxed (method="auto").

    The plan is ``diag(u) K~ diag(v)``. A plain iteration is ``v = b / (K~^T u)`` then
    ``u = a / (K~ v)``; the column error of the current plan, ``|v * (K~^T u) - b|``,
    falls out of the first half for free and is what the checks read. The row update
    just before a check is always plain, so rows are exact whenever the error is read
    and the returned plan has exact rows.
    """
    eps = epsilons[0]
    col_real = (b > 0).to(b.dtype)[:, None, :]  # [batch, 1, m]
    if stabilised:
        g = torch.zeros_like(b).masked_fill_(b == 0, -math.inf)  # [batch, m]
        f, kern = _log_row_step(c, g, a, col_real, eps)  # [batch, n], [batch, n, m]
        u = torch.ones_like(a)[:, None, :]  # [batch, 1, n]
    else:
        # Shifting C by a constant per pair leaves the plan unchanged (the scalings
        # absorb it) and keeps the largest kernel entry at 1.
        kern = (c - c_min[:, None, None]).div_(-eps).exp_()  # [batch, n, m]
        kern.mul_(a[:, :, None] > 0).mul_(col_real)
        u = (a / kern.sum(-1).clamp_min(_FLOOR))[:, None, :]  # [batch, 1, n]
    kern_t = kern.transpose(1, 2)  # [batch, m, n], a view
    # Vectors live as [batch, 1, k] rows so both matvecs are plain bmm's, no reshapes.
    a, b = a[:, None, :], b[:, None, :]  # [batch, 1, n], [batch, 1, m]
    v = torch.ones_like(b)  # [batch, 1, m]
    omega = torch.ones_like(a[:, 0, 0])  # [batch]; relaxation factor per pair
    omega_cap = torch.full_like(omega, _OMEGA)  # [batch]; halved at each roll-back
    relaxed = False  # whether any pair may have omega > 1 (known on the host)
    saved = None  # (u, v, err, dual, it) at the last check, for roll-backs

    def absorb(eps_old: float, eps_new: float) -> None:
        # Fold u into f, then one exact log-domain iteration at eps_new rebuilds K~.
        # The next block runs plain: with no saved state, it could not be undone.
        nonlocal f, g, kern, kern_t, u, v, saved, relaxed
        f = f + eps_old * u[:, 0].log()  # padded rows: -inf + log 0 stays -inf
        g = _log_col_step(c, f, b[:, 0], eps_new)
        f, kern = _log_row_step(c, g, a[:, 0], col_real, eps_new)
        kern_t = kern.transpose(1, 2)
        u, v, saved, relaxed = torch.ones_like(a), torch.ones_like(b), None, False

    it = 0
    err = torch.full_like(omega, math.inf)  # [batch]
    for stage, eps_stage in enumerate(epsilons):
        last = stage == len(epsilons) - 1
        if stage > 0:
            absorb(eps, eps_stage)
            it += 1
        eps = eps_stage
        start = it
        end = max_iter if last else min(it + _STAGE_ITERS, max_iter - 1)
        while True:
            col = torch.bmm(u, kern)  # [batch, 1, m] = (K~^T u)^T
            if it == end or (it - start) % check_every == 0:
                err = (v * col - b).abs_().sum((1, 2))  # [batch]
                if stabilised:
                    dual = _dual(a, b, f, g, u, v, eps)  # [batch]
                    worse = torch.zeros_like(omega, dtype=torch.bool)  # [batch]
                    if saved is not None:
                        # Plain Sinkhorn never lowers the dual objective: a relaxed block
                        # that did (or went non-finite: NaN compares False) is undone.
                        slack = 1e-6 * (1.0 + saved[3].abs())
                        worse = ~(dual >= saved[3] - slack) & (omega > 1)
                        w3 = worse[:, None, None]
                        u, v = torch.where(w3, saved[0], u), torch.where(w3, saved[1], v)
                        err = torch.where(worse, saved[2], err)
                        dual = torch.where(worse, saved[3], dual)
                        omega_cap = torch.where(worse, 1.0 + (omega - 1.0) / 2, omega_cap)
                    scale = torch.stack([_max_abs_log(u, a), _max_abs_log(v, b)]).amax()
                    stats = torch.stack([err.max(), scale, worse.any()]).tolist()
                    err_max, log_scale, any_worse = stats  # one device sync per check
                elif last and tol is not None:
                    err_max = err.max().item()
                if last and tol is not None and err_max <= tol:
                    break
                if it >= end:
                    break
                if stabilised:
                    if any_worse:
                        col = torch.bmm(u, kern)
                    if log_scale > _ABSORB_LOG_SCALE:
                        absorb(eps, eps)
                        it += 1
                        continue
                    if saved is not None:
                        best = _next_omega(err, saved[2], omega, it - saved[4])
                        omega, relaxed = torch.minimum(best, omega_cap), True
                    saved = (u, v, err, dual, it)
            check_next = it + 1 == end or (it + 1 - start) % check_every == 0
            v_new = b / col.clamp_min_(_FLOOR)  # [batch, 1, m]
            v = _relax(v_new, v, omega) if relaxed else v_new
            row = torch.bmm(v, kern_t)  # [batch, 1, n] = (K~ v)^T
            u_new = a / row.clamp_min_(_FLOOR)  # [batch, 1, n]
            u = _relax(u_new, u, omega) if relaxed and not check_next else u_new
            it += 1
    plan = kern.mul_(u.transpose(1, 2)).mul_(v)  # [batch, n, m]
    return plan, it, err


def _dual(a: Tensor, b: Tensor, f: Tensor, g: Tensor, u: Tensor, v: Tensor, eps: float) -> Tensor:
    """Dual objective ``<a, f + eps log u> + <b, g + eps log v>`` per pair, [batch].

    The full dual also has ``-eps <1, P 1>``, which is ``-eps`` at the checks (rows are
    exact there). ``a``, ``u`` [batch, 1, n]; ``b``, ``v`` [batch, 1, m]; ``f``, ``g``
    [batch, n] / [batch, m], -inf on padding, where the terms count as 0.
    """
    rows = (a * (f[:, None, :] + eps * u.log())).masked_fill_(a == 0, 0.0)
    cols = (b * (g[:, None, :] + eps * v.log())).masked_fill_(b == 0, 0.0)
    return rows.sum((1, 2)) + cols.sum((1, 2))


def _max_abs_log(scaling: Tensor, marginal: Tensor) -> Tensor:
    """Largest ``|log scaling|`` over real entries (``marginal > 0``), a 0-dim tensor."""
    return scaling.log().abs_().masked_fill_(marginal == 0, 0.0).amax()


def _relax(new: Tensor, old: Tensor, omega: Tensor) -> Tensor:
    """Over-relaxed scaling ``old + w (new - old)``, kept >= ``new / 10``.

    To first order around the fixed point this is the multiplicative (log-domain)
    over-relaxation ``old^(1-w) new^w`` of the papers, hence the same asymptotic rate,
    for one fused op instead of a pow. It is exactly ``new`` where ``w == 1`` and 0 on
    padding. ``new``, ``old`` [batch, 1, k]; ``omega`` [batch].
    """
    return torch.maximum(torch.lerp(old, new, omega[:, None, None]), new.mul_(0.1))


def _next_omega(err: Tensor, err_before: Tensor, omega: Tensor, n_iter: int) -> Tensor:
    """Near-optimal over-relaxation per pair from the error decay of the last block.

    With ``lam`` the observed per-iteration contraction under relaxation ``w``, Young's
    SOR relation ``(lam + w - 1)^2 = lam w^2 rho`` gives the plain Sinkhorn rate
    ``rho``, and the optimal factor is ``2 / (1 + sqrt(1 - rho))`` (Lehmann et al.
    2022). All tensors [batch].
    """
    lam = (err / err_before.clamp_min(1e-30)).clamp_(1e-6, 0.999).pow_(1.0 / max(n_iter, 1))
    rho = ((lam + omega - 1).square_() / (lam * omega.square())).clamp_(0.0, 0.999)
    return (2.0 / (1.0 + (1.0 - rho).sqrt_())).clamp_(1.0, _OMEGA)


def _sinkhorn_log(
    c: Tensor,
    a: Tensor,
    b: Tensor,
    col_mask: Tensor,
    epsilons: list[float],
    max_iter: int,
    tol: float | None,
    check_every: int,
) -> tuple[Tensor, int, Tensor]:
    """Log-domain Sinkhorn on the potentials ``f, g`` (cost units), the safe reference.

    The column marginal of the current plan is ``b_j exp((g_j - g_new_j)/eps)`` with
    ``g_new`` the next column update, so the check costs no extra pass.
    """
    log_a = a.log()  # [batch, n]
    g = torch.zeros_like(b).masked_fill_(~col_mask, -math.inf)  # [batch, m]
    f = epsilons[0] * (log_a - _lse((g[:, None, :] - c).div_(epsilons[0]), dim=-1))  # [batch, n]
    it = 0
    err = torch.full_like(a[:, 0], math.inf)  # [batch]
    for stage, eps in enumerate(epsilons):
        last = stage == len(epsilons) - 1
        start = it
        end = max_iter if last else min(it + _STAGE_ITERS, max_iter - 1)
        while True:
            g_new = _log_col_step(c, f, b, eps)  # [batch, m]
            if it == end or (it - start) % check_every == 0:
                shift = torch.where(col_mask, (g - g_new) / eps, 0.0)  # [batch, m]
                err = (b * torch.expm1(shift)).abs_().sum(-1)  # [batch]
                if last and tol is not None and float(err.max()) <= tol:
                    break
                if it >= end:
                    break
            g = g_new
            f = eps * (log_a - _lse((g[:, None, :] - c).div_(eps), dim=-1))  # [batch, n]
            it += 1
    # The plan of the last row update, normalised in the kernel domain: exact rows even
    # where fp32 rounding of (f + g - C)/eps would be amplified by a tiny eps.
    _, plan = _log_row_step(c, g, a, col_mask[:, None, :].to(c.dtype), eps)  # [batch, n, m]
    return plan, it, err


def cost_matrix(x: Tensor, y: Tensor, cost: str = "cosine") -> Tensor:
    r"""Pairwise token costs, differentiable.

    ``"cosine"``: :math:`C_{ij} = 1 - \cos(x_i, y_j)`, in [0, 2].
    ``"sqeuclidean"``: :math:`C_{ij} = \|x_i - y_j\|^2 / d`, the mean squared
    difference per dimension. Dividing by ``d`` makes eps mean the same across hidden
    sizes: transformer states leave a LayerNorm with ~unit RMS per coordinate, so
    ``||x||^2 ~ d`` and the cost is O(1) whatever ``d``; for two states of RMS exactly
    1 it equals ``2 (1 - cos)``, twice the cosine cost, whereas for unnormalised
    states it also sees the difference in norms, which the cosine cost ignores.

    Half-precision inputs are computed in float32: ``1 - cos`` in bf16 has a
    resolution of ~4e-3, as coarse as the smallest useful eps.

    Parameters
    ----------
    x : Tensor, shape [batch, n, d]
    y : Tensor, shape [batch, m, d]
    cost : {"cosine", "sqeuclidean"}

    Returns
    -------
    Tensor, shape [batch, n, m]
    """
    if cost not in COSTS:
        raise ValueError(f"cost={cost!r} is not supported; allowed: {', '.join(COSTS)}")
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, Tensor) or t.dim() != 3:
            shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a tensor of shape [batch, tokens, dim], got {shape}")
    if x.shape[0] != y.shape[0] or x.shape[2] != y.shape[2]:
        raise ValueError(
            f"x {tuple(x.shape)} and y {tuple(y.shape)} must share batch and dim: "
            "[batch, n, d] and [batch, m, d]"
        )
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    if y.dtype in (torch.float16, torch.bfloat16):
        y = y.float()
    with full_precision(x.device):  # autocast would run the bmm in the half dtype
        if cost == "cosine":
            # shape [batch, n, m]; F.normalize keeps all-zero (padding) vectors finite
            return 1.0 - torch.bmm(F.normalize(x, dim=-1), F.normalize(y, dim=-1).transpose(1, 2))
        x_sq = x.pow(2).sum(-1, keepdim=True)  # [batch, n, 1]
        y_sq = y.pow(2).sum(-1).unsqueeze(1)  # [batch, 1, m]
        sq = torch.baddbmm(x_sq + y_sq, x, y.transpose(1, 2), alpha=-2.0)  # [batch, n, m]
        return sq.clamp_min(0.0) / x.shape[-1]


def ot_distillation_loss(
    teacher_states: Tensor | Sequence[Tensor],
    student_states: Tensor | Sequence[Tensor],
    teacher_mask: Tensor,
    student_mask: Tensor,
    eps: float,
    *,
    cost: str = "cosine",
    layer_weights: Sequence[float] | None = None,
    max_iter: int = 1000,
    tol: float | None = 1e-3,
    return_plans: bool = False,
    **sinkhorn_kwargs,
) -> Tensor | tuple[Tensor, list[Tensor]]:
    r"""OPTICAL token-alignment loss between a frozen teacher and a student.

    .. math::
        L = \sum_l w_l \frac{1}{B} \sum_{b=1}^{B} \langle P^\star_{l,b}, C_{l,b} \rangle_F,
        \qquad \sum_l w_l = 1,

    with ``C_{l,b} = cost_matrix(teacher_l[b], student_l[b])`` and ``P*`` the entropic
    plan of :func:`sinkhorn`, solved under ``no_grad`` on the detached cost: the loss is
    ``<P*.detach(), C>``, so ``dL/dC = w_l P* / B`` with no backward through Sinkhorn.
    By the envelope theorem ``P*`` is, at convergence, the exact gradient of the
    entropic OT value ``<P*, C> - eps H(P*)``; the value returned is its linear part
    ``<P*, C>``, the transport cost OPTICAL minimises (Huang, Yu & Allan 2023,
    arXiv 2301.12566, its OT alignment loss), whose full derivative would add
    ``<dP*/dC, C>`` (what
    autograd through POT's ``ot.sinkhorn2`` computes; ~8% apart at eps=0.1). The
    teacher is frozen: its states are detached, gradient reaches the student only. All
    layers are solved in one batched Sinkhorn call.

    Parameters
    ----------
    teacher_states : Tensor [batch, n, d] or sequence of them (one per layer)
    student_states : Tensor [batch, m, d] or sequence of them, as many as the teacher's
    teacher_mask : Tensor, shape [batch, n]
        Attention mask of the teacher side, bool or 0/1 ints.
    student_mask : Tensor, shape [batch, m]
    eps : float
        Entropic regularisation, > 0, in cost units.
    cost : {"cosine", "sqeuclidean"}
        See :func:`cost_matrix`.
    layer_weights : sequence of float, optional
        One non-negative weight per layer, normalised to sum 1; uniform by default.
    max_iter, tol, **sinkhorn_kwargs
        Passed to :func:`sinkhorn` (``method``, ``check_every``, ``eps_scaling``).
    return_plans : bool
        Also return the plans, one [batch, n, m] float tensor per layer.

    Returns
    -------
    Tensor (scalar), or (Tensor, list of Tensor) when ``return_plans``.
    """
    teacher = _as_layers(teacher_states, "teacher_states")
    student = _as_layers(student_states, "student_states")
    if len(teacher) != len(student):
        raise ValueError(
            f"teacher_states has {len(teacher)} layers but student_states has {len(student)}; "
            "pass one student tensor per teacher tensor"
        )
    _check_eps(eps, "eps")
    if cost not in COSTS:
        raise ValueError(f"cost={cost!r} is not supported; allowed: {', '.join(COSTS)}")
    batch, n, _ = teacher[0].shape
    m = student[0].shape[1]
    for layer, (t, s) in enumerate(zip(teacher, student, strict=True)):
        if s.shape[0] != t.shape[0]:
            raise ValueError(
                f"batch sizes differ: teacher_states[{layer}] has {t.shape[0]} pairs, "
                f"student_states[{layer}] has {s.shape[0]}"
            )
        if s.shape[2] != t.shape[2]:
            raise ValueError(
                f"hidden dims differ: teacher_states[{layer}] has d={t.shape[2]}, "
                f"student_states[{layer}] has d={s.shape[2]}; project one side first"
            )
        if t.shape[:2] != (batch, n) or s.shape[:2] != (batch, m):
            raise ValueError(
                f"all layers must share [batch, tokens] (one mask per side): "
                f"teacher_states[{layer}] is {tuple(t.shape)}, student_states[{layer}] is "
                f"{tuple(s.shape)}, layer 0 has "
                f"[{batch}, {n}, ...] and [{batch}, {m}, ...]"
            )
    device = student[0].device
    t_mask = _as_mask(teacher_mask, "teacher_mask", (batch, n), device, required=True)
    s_mask = _as_mask(student_mask, "student_mask", (batch, m), device, required=True)
    weights = normalize_layer_weights(layer_weights, len(teacher))  # [n_layers], sums to 1

    costs = [
        cost_matrix(t.detach(), s, cost) for t, s in zip(teacher, student, strict=True)
    ]  # each [batch, n, m]
    n_layers = len(costs)
    c = costs[0] if n_layers == 1 else torch.cat(costs)  # [n_layers * batch, n, m]
    if n_layers > 1:
        t_mask, s_mask = t_mask.repeat(n_layers, 1), s_mask.repeat(n_layers, 1)
    result = sinkhorn(
        c.detach(), t_mask, s_mask, eps, max_iter=max_iter, tol=tol, **sinkhorn_kwargs
    )
    plans = result.plan.view(n_layers, batch * n * m)  # [n_layers, batch * n * m]
    # sum_l w_l / batch * <P_l, C_l>, one fused dot per layer; d loss / d C_l = w_l P_l / batch
    with full_precision(device):
        loss = sum(
            float(w) / batch * torch.dot(p, c_l.reshape(-1).to(p.dtype))
            for w, p, c_l in zip(weights, plans, c.view(n_layers, -1), strict=True)
            if w > 0
        )
    if return_plans:
        return loss, list(result.plan.view(n_layers, batch, n, m).unbind(0))
    return loss


def _check_eps(eps: float, name: str) -> None:
    if (
        isinstance(eps, bool)
        or not isinstance(eps, numbers.Real)
        or not math.isfinite(eps)
        or eps <= 0
    ):
        raise ValueError(
            f"{name} must be a finite number > 0 (e.g. 0.05 for cosine costs), got {eps!r}"
        )


def _as_layers(states: Tensor | Sequence[Tensor], name: str) -> list[Tensor]:
    if isinstance(states, Tensor):
        layers = [states]
    elif isinstance(states, Sequence) and len(states) > 0:
        layers = list(states)
    else:
        raise ValueError(
            f"{name} must be a tensor [batch, tokens, dim] or a non-empty sequence of them"
        )
    for i, t in enumerate(layers):
        if not isinstance(t, Tensor) or t.dim() != 3 or not t.is_floating_point():
            shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(
                f"{name}[{i}] must be a float tensor of shape [batch, tokens, dim], got {shape}"
            )
    return layers


def _as_mask(
    mask: Tensor | None,
    name: str,
    shape: tuple[int, int],
    device: torch.device,
    required: bool = False,
) -> Tensor:
    """Validate a [batch, tokens] mask (bool or 0/1) and return it as bool on ``device``."""
    if mask is None and not required:
        return torch.ones(shape, dtype=torch.bool, device=device)
    if not isinstance(mask, Tensor) or tuple(mask.shape) != shape:
        got = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"{name} must have shape [batch, tokens] = {list(shape)}, got {got}")
    if mask.dtype != torch.bool:
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(f"{name} must be bool or hold only 0/1 values")
        mask = mask != 0
    mask = mask.to(device)
    empty = (~mask.any(-1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"{name} has no real token for pair index {empty[:10]}; every pair needs at least one"
        )
    return mask


def normalize_layer_weights(layer_weights: Sequence[float] | None, n_layers: int) -> Tensor:
    """Per-layer weights ``[n_layers]`` (float64) summing to 1: uniform for None, else
    ``layer_weights`` (one finite, non-negative weight per layer, not all zero)
    divided by their sum. Raises ValueError otherwise."""
    if layer_weights is None:
        return torch.full((n_layers,), 1.0 / n_layers, dtype=torch.float64)
    w = torch.as_tensor(
        list(layer_weights) if not isinstance(layer_weights, Tensor) else layer_weights,
        dtype=torch.float64,
    ).flatten()
    if w.numel() != n_layers:
        raise ValueError(
            f"layer_weights has {w.numel()} entries; expected one per layer ({n_layers})"
        )
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or float(w.sum()) <= 0:
        raise ValueError(f"layer_weights must be finite, >= 0 and not all zero, got {w.tolist()}")
    return w / w.sum()
