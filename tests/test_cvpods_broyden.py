"""``broyden_cvpods`` reproduces the original IFR solver step for step: checked against a literal
float64 transcription of its algorithm (compatibility spec, section 5.4) in the original's own
tensor layout: states (B, D, 1), Us (B, D, 1, K), VTs (B, K, D, 1), Python-float objectives."""
import math

import pytest
import torch

from ifr.deq import IFRBlock, SOLVERS, cvpods_broyden_solve


def _minus_identity_plus_low_rank(us, vts, x):
    """(-I + U V^T) x in the original layout."""
    if us.shape[-1] == 0:
        return -x
    vtx = torch.einsum("bkdi,bdi->bk", vts, x)
    return -x + torch.einsum("bdik,bk->bdi", us, vtx)


def _transposed(us, vts, x):
    """x^T (-I + U V^T) in the original layout."""
    if us.shape[-1] == 0:
        return -x
    xtu = torch.einsum("bdi,bdik->bk", x, us)
    return -x + torch.einsum("bk,bkdi->bdi", xtu, vts)


def original_broyden(g, x0, threshold, eps):
    """The original solver: returns (lowest_x, objectives after each step)."""
    bsz, dim, _ = x0.shape
    memory = min(threshold, 27)
    us = torch.zeros(bsz, dim, 1, memory, dtype=x0.dtype)
    vts = torch.zeros(bsz, memory, dim, 1, dtype=x0.dtype)
    x = x0
    gx = g(x)
    update = -gx
    objective = init = lowest = torch.norm(gx).item()
    lowest_x = x0
    trace = [objective]
    nstep = 0
    while objective >= eps and nstep < threshold:
        new_x = x + update
        new_gx = g(new_x)
        delta_x, delta_gx = new_x - x, new_gx - gx
        x, gx = new_x, new_gx
        nstep += 1
        objective = torch.norm(gx).item()
        trace.append(objective)
        if objective < lowest:
            lowest_x, lowest = x.clone(), objective
        if objective < eps:
            break
        if objective > init * 1e6:
            break
        part_us, part_vts = us[..., :nstep - 1], vts[:, :nstep - 1]
        vt = _transposed(part_us, part_vts, delta_x)
        u = (delta_x - _minus_identity_plus_low_rank(part_us, part_vts, delta_gx)) / \
            torch.einsum("bij,bij->b", vt, delta_gx)[:, None, None]
        vt[vt != vt] = 0
        u[u != u] = 0
        vts[:, (nstep - 1) % memory] = vt
        us[..., (nstep - 1) % memory] = u
        update = -_minus_identity_plus_low_rank(us[..., :nstep], vts[:, :nstep], gx)
    return lowest_x, trace


def _block_map(batch=3, channels=8, size=5):
    torch.manual_seed(0)
    block = IFRBlock(channels, num_groups=4, weight_norm=True).double()
    x = torch.randn(batch, channels, size, size, dtype=torch.float64)
    return (lambda z: block(z, x)), x


@pytest.mark.parametrize("max_iter,tol", [(15, 1e-12), (6, 1e-12), (40, 1e-3)])
def test_matches_the_original_solver_step_by_step(max_iter, tol):
    f, x = _block_map()
    shape = x.shape

    def g(z_original):  # the original's residual map on (B, D, 1)
        z = z_original.view(shape)
        return (f(z) - z).reshape(shape[0], -1, 1)

    eps = tol * math.sqrt(x.numel())
    expected, expected_trace = original_broyden(g, torch.zeros(shape[0], x[0].numel(), 1, dtype=x.dtype),
                                                max_iter, eps)
    z, stats = cvpods_broyden_solve(f, torch.zeros_like(x), max_iter=max_iter, tol=tol)
    assert stats.iterations == len(expected_trace) - 1
    assert torch.allclose(stats.trace.norm(dim=1), torch.tensor(expected_trace, dtype=x.dtype), rtol=1e-10, atol=0)
    assert torch.allclose(z, expected.view(shape), rtol=1e-10, atol=1e-12)
    if tol == 1e-3:  # the loose tolerance stops early, on the batch's residual
        assert stats.iterations < max_iter and stats.converged.all()


def test_first_step_moves_away_from_the_fixed_point():
    f, x = _block_map()
    z0 = torch.zeros_like(x)
    _, stats = cvpods_broyden_solve(f, z0, max_iter=1, tol=0.0)
    step = 2 * z0 - f(z0)  # z0 - g(z0), the original's (defective) first step
    assert torch.allclose(stats.trace[1], (f(step) - step).flatten(1).norm(dim=1))


def test_returns_one_iterate_for_the_whole_batch():
    # Sample 0 (a weak contraction) keeps improving after the batch's best step, which sample 1
    # (a strong nonlinearity) decides; the original returns that one step for both samples.
    torch.manual_seed(0)
    w = torch.randn(2, 6, 6, dtype=torch.float64) * torch.tensor([0.3, 1.2], dtype=torch.float64).view(2, 1, 1)
    c = torch.randn(2, 6, dtype=torch.float64)
    f = lambda z: torch.tanh(torch.einsum("bij,bj->bi", w, z) + c)
    z, stats = cvpods_broyden_solve(f, torch.zeros(2, 6, dtype=torch.float64), max_iter=6, tol=0.0)
    best_step = int(stats.trace.norm(dim=1).argmin())
    assert torch.allclose(stats.abs_residual, (f(z) - z).norm(dim=1))
    assert torch.allclose(stats.abs_residual, stats.trace[best_step])
    assert stats.trace[:, 0].min() < 0.5 * stats.abs_residual[0]  # a per-sample choice would differ


def test_empty_batch_and_registry():
    z, stats = cvpods_broyden_solve(lambda z: z + 1, torch.zeros(0, 4, 3, 3))
    assert z.shape == (0, 4, 3, 3) and stats.iterations == 0
    assert SOLVERS["broyden_cvpods"] is cvpods_broyden_solve
