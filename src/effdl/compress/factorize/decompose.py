"""The tensor mathematics of factorization: trained weights in, factor weights out (no modules).

Every function takes a layer's weight (float tensors, any device) and returns the weights of the
smaller layers that replace it, computed in float64 and returned in the weight's dtype:

- `svd_factors`: W (O, I) ~ B (O, r) @ A (r, I), truncated SVD (Eckart-Young: optimal in Frobenius).
- `tucker2_factors`: W (O, I, kh, kw) ~ core (r_out, r_in, kh, kw) x_0 U_out x_1 U_in, Tucker-2 by
  HOOI (tensorly `partial_tucker`; Kim et al. 2016, "Compression of deep convolutional neural
  networks for fast and low power mobile applications").
- `cp_factors`: W ~ sum_r a_r o b_r o c_r o d_r, CP by ALS (tensorly `parafac`; Lebedev et al. 2015,
  "Speeding-up convolutional neural networks using fine-tuned CP-decomposition").
- `spatial_svd_factors`: W seen as the (I*kh, O*kw) matrix, truncated SVD: a kh x 1 convolution to r
  channels, then a 1 x kw convolution (Jaderberg et al. 2014; AIMET's spatial SVD).
- `fit_grouped`: a grouped kxk convolution followed by a 1x1 mixing one fitted to W by least squares
  weighted by the input patches' second moments (so it matches the layer's OUTPUTS on data).
- `energy_rank` and `vbmf_rank`: rank selection from singular values (retained energy; empirical
  variational Bayesian matrix factorization, Nakajima et al. 2013).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from effdl.errors import EffdlError


def _f64(weight: torch.Tensor) -> torch.Tensor:
    return weight.detach().to(device="cpu", dtype=torch.float64)


@contextmanager
def _tensorly() -> Iterator[None]:
    """tensorly on its PyTorch backend, one thread: these tensors are small, and extra BLAS threads
    only contend (a CP fit took 10x longer with threads on a busy 2-core machine)."""
    import tensorly

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tensorly.backend_context("pytorch"), warnings.catch_warnings():
            # the SVD start asks for more vectors than a 3-wide mode has; tensorly fills them randomly
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        torch.set_num_threads(threads)


def singular_values(matrix: torch.Tensor) -> torch.Tensor:
    """Singular values of a 2-D tensor, descending, float64 on the CPU."""
    return torch.linalg.svdvals(_f64(matrix))


def energy_rank(values: torch.Tensor, energy: float) -> int:
    """The smallest r whose top-r singular `values` keep at least `energy` (in (0, 1]) of the total
    squared sum (the "retained energy" rule); at least 1."""
    if not 0.0 < energy <= 1.0:
        raise EffdlError(f"energy must be in (0, 1], got {energy}")
    squares = values.double() ** 2
    total = float(squares.sum())
    if total <= 0:
        return 1
    kept = torch.cumsum(squares, 0) / total
    # tolerance: energy=1 must reach the full rank despite rounding in the cumulative sum
    return max(1, int((kept < energy - 1e-12).sum()) + 1)


def svd_factors(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) with W (O, I) ~ B @ A, A (rank, I) and B (O, rank); the singular values are split as
    their square roots between both, so the two factors have comparable scales (which fine-tuning
    and quantization prefer)."""
    w = _f64(weight)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    root = s[:rank].sqrt()
    first = root[:, None] * vh[:rank]
    second = u[:, :rank] * root[None, :]
    return first.to(weight.dtype), second.to(weight.dtype)


def spatial_matrix(weight: torch.Tensor) -> torch.Tensor:
    """W (O, I, kh, kw) as the (I*kh, O*kw) matrix whose rank-r approximations are a kh x 1
    convolution to r channels followed by a 1 x kw convolution."""
    o, i, kh, kw = weight.shape
    return _f64(weight).permute(1, 2, 0, 3).reshape(i * kh, o * kw)


def spatial_svd_factors(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(vertical (rank, I, kh, 1), horizontal (O, rank, 1, kw)): W[o,i,h,w] ~ sum_r
    horizontal[o,r,0,w] * vertical[r,i,h,0], exact at rank min(I*kh, O*kw)."""
    o, i, kh, kw = weight.shape
    first, second = svd_factors(spatial_matrix(weight).T, rank)  # (O*kw, I*kh) ~ second @ first
    vertical = first.reshape(rank, i, kh, 1)
    horizontal = second.reshape(o, kw, rank).permute(0, 2, 1).reshape(o, rank, 1, kw)
    return vertical.to(weight.dtype).contiguous(), horizontal.to(weight.dtype).contiguous()


def tucker2_factors(weight: torch.Tensor, ranks: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(first (r_in, I, 1, 1), core (r_out, r_in, kh, kw), last (O, r_out, 1, 1)) of the Tucker-2
    decomposition of W (O, I, kh, kw) on its channel modes; exact at ranks (O, I)."""
    from tensorly.decomposition import partial_tucker

    r_out, r_in = ranks
    w = _f64(weight)
    with _tensorly():
        (core, (u_out, u_in)), _ = partial_tucker(w, [r_out, r_in], modes=[0, 1], init="svd", n_iter_max=25, tol=1e-6)
    first = u_in.T.reshape(r_in, w.shape[1], 1, 1)
    last = u_out.reshape(w.shape[0], r_out, 1, 1)
    return first.to(weight.dtype), core.to(weight.dtype).contiguous(), last.to(weight.dtype).contiguous()


def cp_factors(weight: torch.Tensor, rank: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """(first (R, I, 1, 1), vertical (R, 1, kh, 1), horizontal (R, 1, 1, kw), last (O, R, 1, 1)) of
    the rank-R CP decomposition of W (O, I, kh, kw), fitted by ALS from an SVD start (random when R
    exceeds a mode's size, seeded). The CP weights (lambda) are folded into the last factor. ALS
    stops after 50 sweeps: fine-tuning recovers more than further sweeps do, and each costs ~0.1 s on
    a 64x64x3x3 kernel."""
    from tensorly.decomposition import parafac

    w = _f64(weight)
    o, i, kh, kw = w.shape
    with _tensorly():
        cp = parafac(w, rank, init="svd", n_iter_max=50, tol=1e-7, random_state=seed, normalize_factors=False)
    a, b, c, d = (f.detach().double() for f in cp.factors)
    a = a * cp.weights.double()[None, :]
    # balance the scales of the four factors (a product of R rank-1 terms is unchanged)
    norms = [f.norm(dim=0).clamp_min(1e-30) for f in (a, b, c, d)]
    geo = torch.stack(norms).prod(0) ** 0.25
    a, b, c, d = (f / n[None, :] * geo[None, :] for f, n in zip((a, b, c, d), norms))
    first = b.T.reshape(rank, i, 1, 1)
    vertical = c.T.reshape(rank, 1, kh, 1)
    horizontal = d.T.reshape(rank, 1, 1, kw)
    last = a.reshape(o, rank, 1, 1)
    return tuple(t.to(weight.dtype).contiguous() for t in (first, vertical, horizontal, last))


# ------------------------------------------------------------------------------------------ grouped fit


def _mixing_step(wm: torch.Tensor, b: torch.Tensor, gb: torch.Tensor, ridge: float) -> torch.Tensor:
    """The (O, mid) mixing matrix P minimising tr((W - PB) G (W - PB)^T) for a fixed B (mid, I*k),
    given GB^T (I*k, mid): P (B G B^T) = W G B^T, with a small ridge."""
    bgb = b @ gb
    eye = torch.eye(bgb.shape[0], dtype=torch.float64)
    return torch.linalg.solve(bgb + ridge * bgb.diagonal().mean().clamp_min(1e-30) * eye, (wm @ gb).T).T


def _fit_depthwise(
    wm: torch.Tensor, g: torch.Tensor, k: int, iterations: int, ridge: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`fit_grouped` with groups = mid = I: (the depthwise filters (I, k), P (O, I)).

    A depthwise B has only I*k free weights, so its step is solved exactly instead of by conjugate
    gradient over the dense (I, I*k) matrix: the normal equations of the stacked filters are
    ((P^T P) kron 1_kxk) * G. A dense CG product costs O(I^2 k^2 (I + O)), about 11 GFLOP at
    I = O = 512 with 3x3 kernels, and hundreds of them made one VGG-16 layer take minutes; this is
    one (I*k)^2 Cholesky solve per iteration, and the products with the sparse B are einsums.
    """
    o, ik = wm.shape
    i = ik // k
    rows = torch.arange(i).repeat_interleave(k)
    g3 = g.reshape(ik, i, k)
    filters = torch.zeros(i, k, dtype=torch.float64)
    mix = torch.zeros(o, i, dtype=torch.float64)
    for c in range(i):  # start: per input channel, the best rank-1 fit of its O x k filters
        u, sv, vh = torch.linalg.svd(wm[:, c * k:(c + 1) * k], full_matrices=False)
        filters[c] = vh[0] * sv[0].sqrt()
        mix[:, c] = u[:, 0] * sv[0].sqrt()

    def dense(f: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(i, ik, dtype=torch.float64)
        out[rows, torch.arange(ik)] = f.reshape(-1)
        return out

    for _ in range(iterations):
        mix = _mixing_step(wm, dense(filters), torch.einsum("jca,ca->jc", g3, filters), ridge)
        ptp = mix.T @ mix
        system = ptp[rows][:, rows] * g
        # clamped: a zero layer or zero inputs make P, and so the whole system, zero
        system.diagonal().add_(ridge * (ptp.diagonal().mean() * g.diagonal().mean()).clamp_min(1e-30))
        rhs = torch.einsum("cj,jca->ca", mix.T @ wm, g3).reshape(-1, 1)
        factor, info = torch.linalg.cholesky_ex(system)
        solution = torch.cholesky_solve(rhs, factor) if int(info) == 0 else torch.linalg.solve(system, rhs)
        filters = solution.reshape(i, k)
    return filters, mix


def fit_grouped(
    weight: torch.Tensor, groups: int, mid: int, gram: torch.Tensor | None = None, *, iterations: int = 4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(grouped (mid, I/groups, kh, kw), mixing (O, mid, 1, 1)) with W ~ mixing o grouped.

    The effective dense weight of the pair is P @ B, P the (O, mid) mixing matrix and B the (mid,
    I*kh*kw) block-sparse grouped weight. Both are fitted to minimise tr((W - PB) G (W - PB)^T), G
    the (I*kh*kw)^2 second-moment matrix of the layer's input patches (`gram`; identity when None,
    i.e. plain weight error): this is the squared error of the layer's outputs on the calibration
    data. Alternating least squares: P in closed form, B on its normal equations restricted to the
    existing weights (depthwise: solved exactly, `_fit_depthwise`; otherwise block by block,
    `_fit_blocks`).
    Start: for depthwise (groups = I = mid) the best
    rank-1 approximation of each input channel's filters; otherwise the block-diagonal part of W
    (needs mid = O) with P = identity.
    """
    w = _f64(weight)
    o, i, kh, kw = w.shape
    k = kh * kw
    wm = w.reshape(o, i * k)
    g = torch.eye(i * k, dtype=torch.float64) if gram is None else gram.to(torch.float64).cpu()
    g = g / (g.diagonal().mean().clamp_min(1e-30))  # scale-free: only the conditioning matters
    ridge = 1e-6
    if groups == i and mid == i:
        filters, p = _fit_depthwise(wm, g, k, iterations, ridge)
        return filters.reshape(mid, 1, kh, kw).to(weight.dtype).contiguous(), \
            p.reshape(o, mid, 1, 1).to(weight.dtype).contiguous()
    if i % groups or mid % groups:
        raise EffdlError(f"{groups} groups must divide the {i} input and {mid} middle channels")
    if mid != o:
        raise EffdlError(f"a grouped start needs as many middle channels as outputs ({o}), got {mid}")
    blocks, p = _fit_blocks(wm, g, groups, iterations, ridge)
    grouped = blocks.reshape(mid, i // groups, kh, kw)
    return grouped.to(weight.dtype).contiguous(), p.reshape(o, mid, 1, 1).to(weight.dtype).contiguous()


def _fit_blocks(
    wm: torch.Tensor, g: torch.Tensor, groups: int, iterations: int, ridge: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`fit_grouped` with mid = O and `groups` groups: (B as its (groups, O/groups, I*k/groups)
    diagonal blocks, P (O, O)).

    Group a's outputs (rows a*m..) read only its inputs (columns a*n.., input-channel major), so B
    is block diagonal and every product works on the blocks: G times fewer operations than with
    the dense matrix. The B step's normal equations, sum_b (P^T P)_ab B_b G_ba = (P^T W G)_aa,
    are solved by conjugate gradient preconditioned with their diagonal blocks, each inverted
    exactly through the eigenvectors of (P^T P)_aa and G_aa (a Kronecker product), so CG only
    works off the coupling between groups.
    """
    o, ik = wm.shape
    m, n = o // groups, ik // groups
    diagonal = torch.arange(groups)
    blocks = wm.reshape(groups, m, groups, n)[diagonal, :, diagonal, :]  # start: W's block-diagonal part
    g_rows = g.reshape(groups, n, ik)  # g_rows[b] = G[columns of group b, :]
    g_eigen, g_vectors = torch.linalg.eigh(g.reshape(groups, n, groups, n)[diagonal, :, diagonal, :])

    def times_g(x: torch.Tensor) -> torch.Tensor:  # B G as (O, I*k), B given by its blocks
        return torch.einsum("bpn,bnj->bpj", x, g_rows).reshape(o, ik)

    p = torch.eye(o, dtype=torch.float64)
    for iteration in range(iterations):
        # the inner solves only steer the alternation: loose ones until the last, which sets B
        tolerance = 1e-8 if iteration == iterations - 1 else 1e-6
        bg = times_g(blocks)
        p = _mixing_step(wm, torch.block_diag(*blocks), bg.T, ridge)
        ptp = p.T @ p
        ptp_blocks = ptp.reshape(groups, m, groups, m)
        rhs = (p.T @ wm @ g).reshape(groups, m, groups, n)[diagonal, :, diagonal, :]
        shift = ridge * (ptp.diagonal().mean() * g.diagonal().mean()).clamp_min(1e-30)
        p_eigen, p_vectors = torch.linalg.eigh(ptp_blocks[diagonal, :, diagonal, :])
        scale = (p_eigen[:, :, None] * g_eigen[:, None, :] + shift).clamp_min(1e-300)

        def apply(x: torch.Tensor) -> torch.Tensor:
            xg = times_g(x).reshape(groups, m, groups, n)  # (b, p, a, n): B_b G_ba
            return torch.einsum("aibp,bpan->ain", ptp_blocks, xg) + shift * x

        def precondition(r: torch.Tensor) -> torch.Tensor:
            inner = p_vectors.transpose(1, 2) @ r @ g_vectors
            return p_vectors @ (inner / scale) @ g_vectors.transpose(1, 2)

        r = rhs - apply(blocks)
        z = precondition(r)
        d = z.clone()
        rz = (r * z).sum()
        for _ in range(200):
            if r.norm() <= tolerance * rhs.norm().clamp_min(1e-30):
                break
            ad = apply(d)
            step = rz / (d * ad).sum().clamp_min(1e-300)
            blocks = blocks + step * d
            r = r - step * ad
            z = precondition(r)
            new = (r * z).sum()
            d = z + (new / rz.clamp_min(1e-300)) * d
            rz = new
    return blocks, p


def patch_gram(inputs: torch.Tensor, kernel: tuple[int, int], stride, padding, dilation) -> torch.Tensor:
    """The (I*kh*kw)^2 second-moment matrix of the patches a convolution reads from `inputs`
    (N, I, H, W), in float64: sum over every output position of patch patch^T."""
    cols = torch.nn.functional.unfold(inputs.detach().double(), kernel, dilation=dilation, padding=padding,
                                      stride=stride)  # (N, I*k, L)
    cols = cols.transpose(1, 2).reshape(-1, cols.shape[1])
    return cols.T @ cols


# ------------------------------------------------------------------------------------------------- VBMF


def _vbmf_threshold(alpha: float) -> float:
    """x_ = (1 + t)(1 + alpha / t), t the root of Phi(t) + Phi(t / alpha) = 0, Phi(z) = log(1 + z) / z - 1/2:
    the normalised squared singular value above which EVB keeps a component (Nakajima et al. 2013)."""
    def xi(t: float) -> float:
        return math.log1p(t) / t + math.log1p(t / alpha) / (t / alpha) - 1.0

    low, high = 1e-6, 100.0 * max(1.0, math.sqrt(alpha))  # xi > 0 near 0, < 0 far out: bisection
    for _ in range(200):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if xi(mid) > 0 else (low, mid)
    t = 0.5 * (low + high)
    return (1 + t) * (1 + alpha / t)


def vbmf_rank(matrix: torch.Tensor) -> tuple[int, float]:
    """(rank, noise variance) of `matrix` by empirical variational Bayesian matrix factorization with
    the noise variance estimated too (the fully automatic EVB of Nakajima, Sugiyama, Babacan and
    Tomioka 2013, "Global analytic solution of fully-observed variational Bayesian matrix
    factorization", JMLR 14; written here from the paper's analytic solution).

    For an L x M matrix (L <= M, alpha = L/M) with singular values g_h and noise variance s2, put
    x_h = g_h^2 / (M s2). EVB keeps exactly the components with x_h > x_, a threshold depending on
    alpha only (`_vbmf_threshold`), and its free energy is, up to constants, sum_h psi(x_h) with
    psi(x) = x - log x, minus psi1(x) = t - log(1 + t) - alpha log(1 + t / alpha) for kept
    components, t = ((x - 1 - alpha) + sqrt((x - 1 - alpha)^2 - 4 alpha)) / 2. The noise variance
    minimises that energy: searched on a log grid between the largest singular value's scale and
    the whole matrix's mean square, then refined. Returns at least rank 1.
    """
    values = singular_values(matrix)
    l_dim, m_dim = sorted(matrix.shape)
    alpha = l_dim / m_dim
    threshold = _vbmf_threshold(alpha)
    g2 = (values[:l_dim] ** 2).numpy()

    def energy(s2: float) -> tuple[float, int]:
        x = g2 / (m_dim * s2)
        x = np.maximum(x, 1e-300)
        total = float(np.sum(x - np.log(x)))
        kept = x > threshold
        if kept.any():
            xk = x[kept]
            z = xk - 1 - alpha
            t = 0.5 * (z + np.sqrt(np.maximum(z * z - 4 * alpha, 0.0)))
            total += float(np.sum(np.log1p(t) + alpha * np.log1p(t / alpha) - t))
        return total, int(kept.sum())

    upper = float(g2.sum()) / (l_dim * m_dim)  # everything is noise
    lower = max(float(g2[-1]) / m_dim, upper * 1e-8) if g2[-1] > 0 else upper * 1e-8
    lower = min(lower, upper / 2)
    grid = np.exp(np.linspace(math.log(lower), math.log(upper), 400))
    scores = [energy(s2)[0] for s2 in grid]
    best = int(np.argmin(scores))
    # golden-section refinement between the best grid point's neighbours
    a, b = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(60):
        c, d = b - ratio * (b - a), a + ratio * (b - a)
        if energy(c)[0] < energy(d)[0]:
            b = d
        else:
            a = c
    s2 = 0.5 * (a + b)
    return max(1, energy(s2)[1]), s2
