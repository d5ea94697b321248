import pytest
import torch

from ifr.deq import SOLVERS, SolverConfig, broyden_solve, fixed_point_solve, get_solver

# The per-sample solvers; broyden_cvpods (batch-global by design) is tested in test_cvpods_broyden.py.
SOLVER_NAMES = sorted(set(SOLVERS) - {"broyden_cvpods"})


def _linear_coefficients(batch: int, dim: int, spectral_radius):
    """Per-sample A (B, D, D) with spectral radius ``spectral_radius`` (a number or one per sample), b (B, D)."""
    a = torch.randn(batch, dim, dim, dtype=torch.float64)
    radius = torch.linalg.eigvals(a).abs().amax(dim=1).view(-1, 1, 1)
    a = a * (torch.as_tensor(spectral_radius, dtype=torch.float64).view(-1, 1, 1) / radius)
    return a, torch.randn(batch, dim, dtype=torch.float64)


def _linear_problem(batch: int, dim: int, spectral_radius: float, dtype=torch.float64, device="cpu"):
    """Per-sample z = A z + b with A's spectral radius set, and its float64 reference solution."""
    a, b = _linear_coefficients(batch, dim, spectral_radius)
    reference = torch.linalg.solve(torch.eye(dim, dtype=torch.float64) - a, b).to(device)
    a, b = a.to(device, dtype), b.to(device, dtype)
    return (lambda z: torch.einsum("bij,bj->bi", a, z) + b), reference


@pytest.mark.parametrize("name", SOLVER_NAMES)
def test_solvers_reach_tolerance_on_contractive_linear_map(name, device):
    f, reference = _linear_problem(batch=4, dim=12, spectral_radius=0.6, device=device)
    z, stats = get_solver(name)(f, torch.zeros(4, 12, dtype=torch.float64, device=device), max_iter=200, tol=1e-10,
                                stop_mode="abs")
    assert stats.converged.all()
    assert (stats.abs_residual < 1e-10).all()
    assert torch.allclose(z, reference, atol=1e-9, rtol=0)
    # The reported residual is that of the returned iterate.
    assert torch.allclose(stats.abs_residual, (f(z) - z).norm(dim=1), rtol=1e-6, atol=1e-14)


@pytest.mark.parametrize("name", SOLVER_NAMES)
def test_solvers_agree_with_float64_reference_on_nonlinear_contraction(name, device):
    torch.manual_seed(1)
    w = (torch.randn(16, 16) * 0.15).to(device)
    c = torch.randn(3, 16).to(device)
    f32 = lambda z: torch.tanh(z @ w.T + c)
    f64 = lambda z: torch.tanh(z @ w.double().T + c.double())
    reference, ref_stats = fixed_point_solve(f64, torch.zeros(3, 16, dtype=torch.float64, device=device),
                                             max_iter=500, tol=1e-14, stop_mode="abs")
    assert ref_stats.converged.all()
    z, stats = get_solver(name)(f32, torch.zeros(3, 16, device=device), max_iter=100, tol=1e-5, stop_mode="rel")
    assert stats.converged.all() and (stats.rel_residual < 1e-5).all()
    assert torch.allclose(z.double(), reference, atol=1e-4, rtol=0)


def test_broyden_solves_non_contractive_linear_fixed_point_to_1e_6():
    # Spectral radius 1.5: plain iteration diverges, Broyden still finds the fixed point.
    f, reference = _linear_problem(batch=3, dim=10, spectral_radius=1.5)
    z0 = torch.zeros(3, 10, dtype=torch.float64)
    z, stats = broyden_solve(f, z0, max_iter=60, tol=1e-6, stop_mode="abs")
    assert stats.converged.all()
    assert ((f(z) - z).norm(dim=1) < 1e-6).all()
    assert torch.allclose(z, reference, atol=1e-5, rtol=0)
    _, plain = fixed_point_solve(f, z0, max_iter=60, tol=1e-6, stop_mode="abs")
    assert not plain.converged.any()


def test_broyden_first_step_is_a_plain_fixed_point_step():
    f, _ = _linear_problem(batch=2, dim=5, spectral_radius=0.5)
    z0 = torch.randn(2, 5, dtype=torch.float64)
    _, stats = broyden_solve(f, z0, max_iter=1, tol=0.0)
    z1 = f(z0)
    assert torch.allclose(stats.trace[1], (f(z1) - z1).norm(dim=1))


@pytest.mark.parametrize("name", SOLVER_NAMES)
def test_samples_converge_independently(name, device):
    f, _ = _linear_problem(batch=3, dim=8, spectral_radius=0.5, device=device)
    z0 = torch.zeros(3, 8, dtype=torch.float64, device=device)
    z_batch, stats = get_solver(name)(f, z0, max_iter=100, tol=1e-8, stop_mode="abs")
    for i in range(3):
        single = lambda z, i=i: f(torch.zeros_like(z0).index_copy(0, torch.tensor([i], device=device), z))[i:i + 1]
        z_alone, _ = get_solver(name)(single, z0[i:i + 1], max_iter=100, tol=1e-8, stop_mode="abs")
        assert torch.allclose(z_batch[i], z_alone[0], atol=1e-12, rtol=0)
    # A sample that converged stops moving: its trace is flat from then on.
    first = int((stats.trace[:, 0] < 1e-8).nonzero()[0])
    assert (stats.trace[first:, 0] == stats.trace[first, 0]).all()


def _exploding_second_sample():
    """Sample 0: the contraction z -> z/2 + 1. Sample 1: residual x100 at every call, then inf."""
    calls = {"n": 0}

    def f(z):
        calls["n"] += 1
        out = z.clone()
        out[0] = 0.5 * z[0] + 1.0
        out[1] = z[1] + 100.0 ** calls["n"] if calls["n"] < 8 else z[1] + float("inf")
        return out

    return f


@pytest.mark.parametrize("name", SOLVER_NAMES)
def test_protective_break_on_divergence(name, device):
    z, stats = get_solver(name)(_exploding_second_sample(), torch.zeros(2, 4, dtype=torch.float64, device=device),
                                max_iter=60, tol=1e-10, stop_mode="abs")
    assert torch.isfinite(z).all()
    assert stats.diverged.tolist() == [False, True]
    assert stats.converged.tolist() == [True, False]
    assert torch.allclose(z[0], torch.full((4,), 2.0, dtype=torch.float64, device=device), atol=1e-9)
    # The diverged sample keeps its lowest-residual iterate: the initial guess.
    assert (z[1] == 0).all()
    assert stats.summary()["diverged"] == 1.0


@pytest.mark.parametrize("name", SOLVER_NAMES)
def test_runaway_iterates_are_caught_in_relative_stop_mode_too(name):
    # f(z) = 3 z + 1 moves away from its fixed point -1/2; ||f(z) - z|| / ||f(z)|| tends to 2/3 and
    # would not flag it, the absolute residual does (and ranks the start as the best iterate)
    z, stats = get_solver(name)(lambda z: 3 * z + 1, torch.zeros(2, 3, dtype=torch.float64), max_iter=20,
                                tol=1e-12, stop_mode="rel", divergence_ratio=100.0)
    if name == "fixed_point":
        assert stats.diverged.all() and stats.iterations < 20
        assert (z == 0).all()
    else:  # the quasi-Newton solvers are exact on an affine map: they find -1/2 instead
        assert torch.allclose(z, torch.full((2, 3), -0.5, dtype=torch.float64))


@pytest.mark.parametrize("name", SOLVER_NAMES)
def test_non_finite_map_is_stopped_and_reported(name, device):
    f = lambda z: z + 1.0 + torch.sqrt(-z)  # NaN as soon as z > 0
    z, stats = get_solver(name)(f, torch.zeros(2, 3, device=device), max_iter=10, tol=1e-6)
    assert torch.isfinite(z).all() and (z == 0).all()
    assert stats.diverged.all() and stats.iterations == 1


def test_empty_batch_and_zero_residual(device):
    for name in SOLVER_NAMES:
        z, stats = get_solver(name)(lambda z: 2 * z, torch.zeros(0, 5, device=device), max_iter=5, tol=1e-6)
        assert z.shape == (0, 5) and stats.iterations == 0
        z, stats = get_solver(name)(lambda z: 2 * z, torch.zeros(2, 5, device=device), max_iter=5, tol=1e-6,
                                    stop_mode="abs")
        assert stats.iterations == 0 and stats.converged.all()


def test_solver_config_validates_and_dispatches():
    with pytest.raises(ValueError, match="unknown fixed-point solver 'newton'"):
        SolverConfig("newton")
    with pytest.raises(ValueError, match="stop_mode"):
        SolverConfig("broyden", stop_mode="max")
    f, reference = _linear_problem(batch=2, dim=6, spectral_radius=0.5)
    config = SolverConfig("anderson", max_iter=100, tol=1e-10, stop_mode="abs", options={"memory": 3})
    z, stats = config.solve(f, torch.zeros(2, 6, dtype=torch.float64))
    assert torch.allclose(z, reference, atol=1e-9)
    assert stats.trace.shape == (stats.iterations + 1, 2)


class _CountingMap:
    """Per-sample linear map z -> A z + b that can be restricted to a subset of the samples, and
    counts how many sample evaluations the solver asked for."""

    def __init__(self, a, b):
        self.a, self.b, self.evaluated = a, b, 0

    def __call__(self, z):
        self.evaluated += z.shape[0]
        return torch.einsum("bij,bj->bi", self.a, z) + self.b

    def restricted(self, index):
        def on_subset(z):
            self.evaluated += z.shape[0]
            return torch.einsum("bij,bj->bi", self.a[index], z) + self.b[index]
        return on_subset


@pytest.mark.parametrize("name", SOLVER_NAMES)
def test_converged_samples_are_not_evaluated_again_and_results_do_not_change(name, device):
    torch.manual_seed(3)
    a, b = (t.to(device) for t in _linear_coefficients(3, 10, [0.1, 0.3, 0.6]))  # the first sample converges first
    restrictable = _CountingMap(a, b)
    plain = lambda z: torch.einsum("bij,bj->bi", a, z) + b  # noqa: E731  (the same map, full batch only)
    z0 = torch.zeros(3, 10, dtype=torch.float64, device=device)
    z_fast, fast = get_solver(name)(restrictable, z0, max_iter=300, tol=1e-10, stop_mode="abs")
    z_full, full = get_solver(name)(plain, z0, max_iter=300, tol=1e-10, stop_mode="abs")
    assert torch.allclose(z_fast, z_full, atol=1e-12, rtol=0) and fast.iterations == full.iterations
    assert fast.converged.all()
    # the fast-converging samples dropped out: fewer than (steps + 1) x 3 sample evaluations
    assert restrictable.evaluated < 3 * (fast.iterations + 1)


def _dense_broyden_trace(f, z0: torch.Tensor, steps: int, memory: int) -> torch.Tensor:
    """Reference: good Broyden with an explicit D x D inverse Jacobian per sample, reset to -I after
    ``memory`` updates; returns the residual norms of z0 and of every step, (steps + 1, B)."""
    batch, dim = z0.shape
    eye = torch.eye(dim, dtype=z0.dtype).expand(batch, dim, dim)
    h, updates = -eye.clone(), 0
    z = z0.clone()
    g = f(z) - z
    trace = [g.norm(dim=1)]
    for _ in range(steps):
        dz = -torch.einsum("bij,bj->bi", h, g)
        z = z + dz
        g_new = f(z) - z
        dg, g = g_new - g, g_new
        trace.append(g.norm(dim=1))
        if updates == memory:
            h, updates = -eye.clone(), 0
            continue
        dz_h = torch.einsum("bi,bij->bj", dz, h)
        h_dg = torch.einsum("bij,bj->bi", h, dg)
        h = h + torch.einsum("bi,bj->bij", dz - h_dg, dz_h) / (dz_h * dg).sum(dim=1).view(-1, 1, 1)
        updates += 1
    return torch.stack(trace)


@pytest.mark.parametrize("memory", [3, 30])
def test_broyden_steps_match_a_dense_inverse_jacobian_reference(memory):
    torch.manual_seed(4)
    w = torch.randn(3, 10, 10, dtype=torch.float64) * 0.4
    c = torch.randn(3, 10, dtype=torch.float64)
    f = lambda z: torch.tanh(torch.einsum("bij,bj->bi", w, z) + c)  # noqa: E731
    z0 = torch.zeros(3, 10, dtype=torch.float64)
    _, stats = broyden_solve(f, z0, max_iter=12, tol=0.0, stop_mode="abs", memory=memory)
    reference = _dense_broyden_trace(f, z0, 12, memory)
    assert torch.allclose(stats.trace, reference, rtol=1e-8, atol=1e-13)


def test_damped_anderson_with_memory_one_is_damped_iteration():
    f, _ = _linear_problem(batch=2, dim=6, spectral_radius=0.9)
    z = torch.zeros(2, 6, dtype=torch.float64)
    expected = [(f(z) - z).norm(dim=1)]
    for _ in range(8):
        z = 0.5 * f(z) + 0.5 * z
        expected.append((f(z) - z).norm(dim=1))
    _, stats = get_solver("anderson")(f, torch.zeros(2, 6, dtype=torch.float64), max_iter=8, tol=0.0,
                                      stop_mode="abs", memory=1, damping=0.5)
    assert torch.allclose(stats.trace, torch.stack(expected), rtol=1e-10, atol=0)


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_channels_last_iterates_stay_channels_last_and_reach_the_same_fixed_point(name):
    from ifr.deq import IFRBlock

    torch.manual_seed(5)
    block = IFRBlock(8, num_groups=2, weight_norm=True).double()
    x = torch.randn(3, 8, 5, 6, dtype=torch.float64)
    layouts = []

    def map_for(x):
        def f(z):
            layouts.append(z.is_contiguous(memory_format=torch.channels_last) and not z.is_contiguous())
            return block(z, x)
        return f

    z_plain, _ = get_solver(name)(map_for(x), torch.zeros_like(x), max_iter=40, tol=1e-9, stop_mode="abs")
    assert not any(layouts)
    layouts.clear()
    x_cl = x.contiguous(memory_format=torch.channels_last)
    z_cl, _ = get_solver(name)(map_for(x_cl), torch.zeros_like(x_cl), max_iter=40, tol=1e-9, stop_mode="abs")
    assert layouts and all(layouts)
    assert z_cl.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(z_cl, z_plain, atol=1e-7, rtol=0)
