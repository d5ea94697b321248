"""The implicit gradient against independent references: unrolled autograd, finite differences."""
import pytest
import torch

from ifr.deq import (EquilibriumRefinement, IFRBlock, ImplicitBackward, PhantomBackward,
                     SolverConfig)

TIGHT = SolverConfig("broyden", max_iter=200, tol=1e-13, stop_mode="abs")


def _small_block(weight_norm=True, device="cpu"):
    block = IFRBlock(channels=8, num_groups=4, weight_norm=weight_norm).to(device, torch.float64)
    with torch.no_grad():  # non-trivial affine parameters, so their gradients are checked for real
        for gn in (block.gn1, block.gn2, block.gn3):
            gn.weight.uniform_(0.5, 1.5)
            gn.bias.uniform_(-0.2, 0.2)
    return block


def _implicit_layer(block, backward=None):
    return EquilibriumRefinement(block, mode="implicit", solver=TIGHT,
                                 backward=backward or ImplicitBackward(TIGHT))


def _loss(z, weight):
    return (z * weight).sum() + (z ** 2).sum()


def _unrolled_reference(block, x, steps):
    """Plain autograd through ``steps`` fixed-point iterations from z0 = 0 (no solver code involved)."""
    z = torch.zeros_like(x)
    for _ in range(steps):
        z = block(z, x)
    return z


def _grads(loss, block, x):
    return torch.autograd.grad(loss, [x, *block.parameters()])


@pytest.mark.parametrize("weight_norm", [True, False])
def test_implicit_gradient_matches_unrolled_autograd(weight_norm, device):
    block = _small_block(weight_norm, device)
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64, device=device, requires_grad=True)
    weight = torch.randn_like(x)
    layer = _implicit_layer(block).train()

    z = layer(x)
    implicit = _grads(_loss(z, weight), block, x)
    assert layer.backward_strategy.last_stats.converged.all()

    z_ref = _unrolled_reference(block, x, steps=300)
    assert (block(z_ref, x) - z_ref).abs().max() < 1e-12  # the unrolled reference has converged
    reference = _grads(_loss(z_ref, weight), block, x)

    names = ["x"] + [n for n, _ in block.named_parameters()]
    for name, g, g_ref in zip(names, implicit, reference):
        rel = (g - g_ref).norm() / g_ref.norm()
        assert rel < 1e-4, f"gradient of {name}: relative error {rel:.2e}"


def test_implicit_gradient_passes_gradcheck(device):
    block = IFRBlock(channels=4, num_groups=2, weight_norm=True).to(device, torch.float64)
    layer = _implicit_layer(block).train()
    params = dict(block.named_parameters())
    names = list(params)

    def fn(x, *param_values):
        z = torch.func.functional_call(layer, {f"block.{n}": v for n, v in zip(names, param_values)}, (x,))
        return z

    x = torch.randn(1, 4, 3, 3, dtype=torch.float64, device=device, requires_grad=True)
    values = [p.detach().clone().requires_grad_() for p in params.values()]
    assert torch.autograd.gradcheck(fn, (x, *values), eps=1e-6, atol=1e-5, rtol=1e-4)


def _saved_tensor_bytes(layer, x):
    """Bytes of all tensors autograd saves for backward during one forward call."""
    total = {"bytes": 0, "count": 0}

    def pack(t):
        total["bytes"] += t.numel() * t.element_size()
        total["count"] += 1
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = layer(x)
    return total, out


def test_implicit_training_graph_does_not_grow_with_forward_iterations(device):
    block = IFRBlock(channels=16, num_groups=4, weight_norm=True).to(device)
    x = torch.randn(3, 16, 6, 6, device=device, requires_grad=True)
    saved = {}
    for iters in (2, 10, 40):
        layer = EquilibriumRefinement(block, mode="implicit",
                                      solver=SolverConfig("broyden", max_iter=iters, tol=0.0)).train()
        saved[iters], out = _saved_tensor_bytes(layer, x)
        assert layer.last_stats.iterations == iters
        out.sum().backward()
    assert saved[2] == saved[10] == saved[40]
    # Unrolled training, for contrast, saves more with every application.
    unrolled_small, _ = _saved_tensor_bytes(EquilibriumRefinement(block, mode="unrolled", num_unrolled=2), x)
    unrolled_large, _ = _saved_tensor_bytes(EquilibriumRefinement(block, mode="unrolled", num_unrolled=10), x)
    assert unrolled_large["bytes"] > 4 * unrolled_small["bytes"]


def test_phantom_gradient_approaches_implicit_gradient_with_more_steps(device):
    block = _small_block(device=device)
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64, device=device, requires_grad=True)
    weight = torch.randn_like(x)
    exact = _grads(_loss(_implicit_layer(block).train()(x), weight), block, x)

    def error(steps, damping=1.0):
        layer = _implicit_layer(block, PhantomBackward(steps=steps, damping=damping)).train()
        approx = _grads(_loss(layer(x), weight), block, x)
        return max(((a - e).norm() / e.norm()).item() for a, e in zip(approx, exact))

    assert error(1) > 1e-2  # one step is a real approximation ...
    assert error(200) < 1e-6  # ... that becomes exact as the unrolled steps converge
    assert error(400, damping=0.5) < 1e-6


def test_backward_strategies_validate_arguments():
    with pytest.raises(ValueError, match="steps"):
        PhantomBackward(steps=0)
    with pytest.raises(ValueError, match="damping"):
        PhantomBackward(damping=1.5)
