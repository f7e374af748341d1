"""The search behind the ``dual`` bound: multipliers ``μ ≥ 0`` for the Lagrangian dual, by projected Adam.

Any ``μ ≥ 0`` gives a sound bound (weak duality), and :mod:`~prune_unlearn.core.confusion` evaluates the
bound soundly (float64, or float32 with a proven rounding bound) at exactly the float32 multipliers this
search returns. So the search may be approximate. It runs its two large matrix products per pass in
bfloat16 where the CPU multiplies bfloat16 natively (AMX or AVX512-BF16: on the MNIST head ≈4–7× the
float32 rate), else in float32; its precision changes how tight the bound gets, never whether it holds.
(So on such CPUs the multipliers, and the patches, differ slightly from a float32 search's.)

One step of one (region, label) pair is one masked forward pass at the Lagrangian's box maximiser
``h* = lo + span·[r > 0]`` (the dual function's value ``rows·f(h*) + Σ_i μ_i (s_i z_i(h*) − θ)`` and its
gradient ``s_i z_i(h*) − θ``) and one masked backward pass for the next
``r = rows·∂f/∂h + Σ_i s_i μ_i ∂z_i/∂h``.

Only a region's largest bound sets its patch size, so the work runs in blocks of ``PATIENCE`` steps: at
the start of a block the pairs to search are chosen (the labels of a region that may hold its largest bound
within the block, see ``GROWTH``, in regions whose largest bound still improved over the last block),
gathered into compact tensors, stepped ``PATIENCE`` times without any gather or scatter, and written back.
A label joining the search starts from its region's most-searched pair's best multipliers (the labels of
one region share its halfspaces).
"""

from __future__ import annotations

import torch

__all__ = ["search_dtype", "search_multipliers"]

# Every PATIENCE steps a region whose largest bound improved by at most RTOL·(1 + |bound|), with the label holding
# it searched in that block, leaves the search.
PATIENCE = 5
RTOL = 1e-3
# A block of PATIENCE steps also takes the labels that may overtake the largest bound within it: those within
# GROWTH times the region's last relative drop per block (at least FOCUS; FIRST_FOCUS in the first block).
# Joining only at block starts within FOCUS lost 3% of tightness (a label overtaking mid-block held the region's
# bound unsearched for the rest of the block); with this rule, on MNIST (2,000 regions, 60 steps), the bound is
# as tight as joining at every step (mean ‖d‖∞ 33.09 vs 33.13) at ≈99 pair-steps per region.
FIRST_FOCUS = 0.1
GROWTH = 0.5
# Labels whose bound lies more than this (relative) below their region's largest do not set the patch size.
FOCUS = 0.02
# Adam's step (times the |∂(f_l − f_t)/∂h| / |a_i| scale) and moment decays.
LR = 0.02
BETAS = (0.7, 0.999)


def search_dtype() -> torch.dtype:
    """bfloat16 where the CPU multiplies it natively (AMX tiles or AVX512-BF16), else float32."""
    cpu = getattr(torch, "cpu", None)
    try:
        native = bool(cpu._is_amx_tile_supported() or cpu._is_avx512_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch without the probes, or a platform they fail on: float32
        native = False
    return torch.bfloat16 if native else torch.float32


class _Head:
    """The head's weights laid out for the search over the box ``lo + span·[0, 1]^d``: transposed for the forward
    products, in ``dtype`` for the two large products per pass, float32 for the small output layer."""

    def __init__(self, weights32: tuple[torch.Tensor, ...], biases: tuple[torch.Tensor, ...], dtype: torch.dtype,
                 lo: torch.Tensor, span: torch.Tensor):
        self.dtype = dtype
        self.w = [w.to(dtype) for w in weights32[:-1]]
        # z_1(lo + span·u) = (W_1 lo + b_1) + (W_1 diag(span)) u: the box maximiser enters as its 0/1 vector u
        self.first_t = (weights32[0] * span).t().contiguous().to(dtype)
        self.first_b = weights32[0] @ lo + biases[0].to(torch.float32)
        self.wt = [w.t().contiguous() for w in self.w[1:]]
        self.b = [b.to(torch.float32) for b in biases[1:-1]]
        self.w_out = weights32[-1].to(torch.float32)
        self.w_out_t = self.w_out.t().contiguous()
        self.b_out = biases[-1].to(torch.float32)
        self.sizes = [w.shape[0] for w in weights32[:-1]]

    def upper_corner(self, r: torch.Tensor) -> torch.Tensor:
        """``u = [r > 0]`` (n, d) in ``dtype``: the Lagrangian's box maximiser is ``lo + span·u`` (where ``r_j = 0``
        either corner maximises; from the sign bit, +0 gives 1)."""
        if self.dtype == torch.bfloat16:  # from the sign bit: 1.0 is 0x3F80 in bfloat16 (≈10× a compare + convert)
            return (r.view(torch.int16) >> 15).bitwise_not_().bitwise_and_(_BF16_ONE).view(torch.bfloat16)
        return (r > 0).to(self.dtype)

    def forward(self, mask_blocks: list[torch.Tensor], u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-activations (n, N) float32 and logits (n, C) float32 of each pair's region map at ``lo + span·u``."""
        z = self._mm(u, self.first_t).to(torch.float32).add_(self.first_b)
        zs = [z]
        for wt, b, m in zip(self.wt, self.b, mask_blocks):
            z = self._mm((z * m).to(self.dtype), wt).to(torch.float32).add_(b)
            zs.append(z)
        logits = torch.addmm(self.b_out, z * mask_blocks[-1], self.w_out_t)
        return torch.cat(zs, dim=1), logits

    def backward(self, mask_blocks: list[torch.Tensor], rows: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """``r`` (n, d) in ``dtype`` for output rows (n, C) float32 and hidden coefficients (n, N) float32."""
        hid = list(torch.split(hidden, self.sizes, dim=1))
        g = torch.addcmul(hid[-1], rows @ self.w_out, mask_blocks[-1])
        for j in range(len(self.w) - 1, 0, -1):
            g = torch.addcmul(hid[j - 1], self._mm(g.to(self.dtype), self.w[j]).to(torch.float32), mask_blocks[j - 1])
        return self._mm(g.to(self.dtype), self.w[0])

    def _mm(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``x @ w``; in bfloat16 with the rows padded to a multiple of ``_ROWS``: oneDNN compiles a kernel for
        every new shape (≈3.5 ms each, more than the product), and the searched pairs change in number."""
        n = x.shape[0]
        if self.dtype != torch.bfloat16 or n % _ROWS == 0:
            return x @ w
        padded = x.new_zeros(n + _ROWS - n % _ROWS, x.shape[1])
        padded[:n] = x
        return (padded @ w)[:n]


_BF16_ONE = torch.tensor(0x3F80, dtype=torch.int16)
_ROWS = 128


def search_multipliers(weights32, biases, masks, rows, signs, thresholds, lower, upper, r0, box, steps, lr=None,
                       dtype: torch.dtype | None = None) -> tuple[torch.Tensor, int]:
    """Multipliers (P, K, N) float32 ≥ 0 for each region and label, and the steps run.

    ``rows`` (P, K, C) are the labels' rows ``e_l − e_t``; ``r0`` (P, K, d) the rows at ``μ = 0`` and ``box`` (P, K)
    their box bounds (the search's starting point); ``signs`` (P, N) ``s_i``; ``thresholds`` (P,) ``θ``.
    """
    p, k, c = rows.shape
    n = masks.shape[1]
    dtype = search_dtype() if dtype is None else dtype
    lo, span = lower.to(torch.float32), (upper - lower).to(torch.float32)
    net = _Head(weights32, biases, dtype, lo, span)
    r_all = r0.to(torch.float32).reshape(p * k, -1)
    if lr is None:
        # μ trades logit units for slack units: scale the step by |∂(f_l − f_t)/∂h| / |a_i| (first layer).
        ratio = r_all.norm(dim=-1).median() / weights32[0].norm(dim=1).median().clamp(min=1e-12)
        lr = LR * float(ratio)
    pair_region = torch.arange(p).repeat_interleave(k)
    masks32 = masks.to(torch.float32)
    signs32 = signs.to(torch.float32)
    rows32 = rows.to(torch.float32).reshape(p * k, c)
    th32 = thresholds.to(torch.float32)
    mu = torch.zeros(p * k, n)
    moments = torch.zeros(p * k, 2, n)
    age = torch.zeros(p * k)
    bound = box.to(torch.float32).flatten()  # the search's estimate of each pair's best bound so far
    best_mu = torch.zeros(p * k, n)
    b1, b2 = BETAS
    searching = torch.ones(p, dtype=torch.bool)
    checkpoint = None
    done = 0
    margin = torch.full((p,), FIRST_FOCUS)  # per region: how far below its largest bound a label joins the block
    active_pairs = torch.zeros(p * k, dtype=torch.bool)
    while done < steps:
        worst_val, worst_lab = bound.view(p, k).max(dim=1)
        if checkpoint is not None:
            drop = (checkpoint - worst_val) / (1 + worst_val.abs())
            # a region leaves once its largest bound stopped improving while that label was searched
            was_searched = active_pairs.view(p, k).gather(1, worst_lab.unsqueeze(1)).squeeze(1)
            searching &= (drop > RTOL) | ~was_searched
            margin = torch.clamp(GROWTH * drop, min=FOCUS)
        checkpoint = worst_val
        near = bound.view(p, k) >= (worst_val - margin * (1 + worst_val.abs())).unsqueeze(1)
        act_mask = (near & searching.unsqueeze(1)).flatten()
        active_pairs = act_mask
        act = act_mask.nonzero().squeeze(1)
        if not len(act):
            break
        _warm_start(act, age, mu, best_mu, r_all, k, net, masks32, signs32, rows32, pair_region)
        reg = pair_region.index_select(0, act)
        m_a = masks32.index_select(0, reg)
        s_a = signs32.index_select(0, reg)
        mask_blocks = list(torch.split(m_a, net.sizes, dim=1))
        rows_a, th_a = rows32.index_select(0, act), th32.index_select(0, reg).unsqueeze(1)
        mu_a, mom_a, age_a = mu.index_select(0, act), moments.index_select(0, act), age.index_select(0, act)
        m1_a, m2_a = mom_a[:, 0], mom_a[:, 1]
        bound_a, best_a = bound.index_select(0, act), best_mu.index_select(0, act)
        r_a = r_all.index_select(0, act).to(dtype)
        for _ in range(min(PATIENCE, steps - done)):
            done += 1
            z, logits = net.forward(mask_blocks, net.upper_corner(r_a))
            grad = torch.addcmul(-th_a, s_a, z)  # ∂L/∂μ_i = s_i z_i(h*) − θ
            value = (rows_a * logits).sum(-1) + (mu_a * grad).sum(-1)  # the dual function at μ
            better = value < bound_a
            bound_a = torch.where(better, value, bound_a)
            torch.where(better.unsqueeze(1), mu_a, best_a, out=best_a)
            age_a += 1
            m1_a.lerp_(grad, 1 - b1)
            m2_a.mul_(b2).addcmul_(grad, grad, value=1 - b2)
            # Adam's bias-corrected step m̂/(√v̂ + ε) as (√(1 − β2^a)/(1 − β1^a))·m/(√v + ε') per pair
            scale = (-lr * (1 - b2**age_a).sqrt() / (1 - b1**age_a)).unsqueeze(1)
            mu_a.addcdiv_(m1_a * scale, m2_a.sqrt().add_(1e-12)).clamp_(min=0)
            r_a = net.backward(mask_blocks, rows_a, s_a * mu_a)
        mu.index_copy_(0, act, mu_a)
        moments.index_copy_(0, act, mom_a)
        age.index_copy_(0, act, age_a)
        bound.index_copy_(0, act, bound_a)
        best_mu.index_copy_(0, act, best_a)
        r_all.index_copy_(0, act, r_a.to(torch.float32))
    return best_mu.view(p, k, n), done


def _warm_start(act, age, mu, best_mu, r_all, k, net, masks32, signs32, rows32, pair_region):
    """Pairs joining the search start from the best multipliers of their region's most-searched pair: the
    labels of one region share its halfspaces, so those multipliers already cut most labels' bounds."""
    new = act[age.index_select(0, act) == 0]
    if not len(new):
        return
    region = new // k
    ages = age.view(-1, k).index_select(0, region)  # (new, k)
    has = ages.max(dim=1).values > 0
    new, donor = new[has], (region * k + ages.argmax(dim=1))[has]
    if not len(new):
        return
    mu0 = best_mu.index_select(0, donor)
    mu.index_copy_(0, new, mu0)
    reg = pair_region.index_select(0, new)
    blocks = list(torch.split(masks32.index_select(0, reg), net.sizes, dim=1))
    r_new = net.backward(blocks, rows32.index_select(0, new), signs32.index_select(0, reg) * mu0)
    r_all.index_copy_(0, new, r_new.to(torch.float32))
