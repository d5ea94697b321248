import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ifr.deq import EquilibriumRefinement, IFRBlock, SolverConfig, WeightNormConv2d


def _reference_block_forward(z, x, w1, w2, gns, groups):
    """The official block written out with functional ops (independent of IFRBlock's code)."""
    u = z + x
    h = F.relu(F.group_norm(F.conv2d(u, w1, padding=1), groups, *gns[0]))
    h = F.group_norm(F.conv2d(h, w2, padding=1), groups, *gns[1])
    return F.group_norm(F.relu(h + u), groups, *gns[2])


@pytest.mark.parametrize("weight_norm", [True, False])
def test_block_matches_the_official_formula(weight_norm, device):
    block = IFRBlock(channels=16, num_groups=4, weight_norm=weight_norm).to(device)
    with torch.no_grad():
        for gn in (block.gn1, block.gn2, block.gn3):
            gn.weight.normal_()
            gn.bias.normal_()
    if weight_norm:
        w1 = block.conv1.weight_v * block.conv1.weight_g / block.conv1.weight_v.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        w2 = block.conv2.weight_v * block.conv2.weight_g / block.conv2.weight_v.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    else:
        w1, w2 = block.conv1.weight, block.conv2.weight
    gns = [(gn.weight, gn.bias) for gn in (block.gn1, block.gn2, block.gn3)]
    z, x = torch.randn(2, 16, 7, 7, device=device), torch.randn(2, 16, 7, 7, device=device)
    assert torch.allclose(block(z, x), _reference_block_forward(z, x, w1, w2, gns, 4), atol=1e-5)


def test_weight_normed_block_state_dict_uses_released_names():
    keys = list(IFRBlock(256, weight_norm=True).state_dict())
    assert keys == ["conv1.weight_g", "conv1.weight_v", "gn1.weight", "gn1.bias",
                    "conv2.weight_g", "conv2.weight_v", "gn2.weight", "gn2.bias",
                    "gn3.weight", "gn3.bias"]
    shapes = {k: tuple(v.shape) for k, v in IFRBlock(256, weight_norm=True).state_dict().items()}
    assert shapes["conv1.weight_g"] == (256, 1, 1, 1) and shapes["conv1.weight_v"] == (256, 256, 3, 3)
    plain = list(IFRBlock(256, weight_norm=False).state_dict())
    assert plain == ["conv1.weight", "gn1.weight", "gn1.bias", "conv2.weight", "gn2.weight", "gn2.bias",
                     "gn3.weight", "gn3.bias"]


def test_weight_norm_conv_starts_equal_to_its_direction_and_follows_g():
    conv = WeightNormConv2d(4, 6, 3, padding=1)
    assert torch.allclose(conv.weight, conv.weight_v)  # g initialised to ||v||
    with torch.no_grad():
        conv.weight_g.mul_(2.0)
    x = torch.randn(1, 4, 5, 5)
    assert torch.allclose(conv(x), F.conv2d(x, 2.0 * conv.weight_v, padding=1), atol=1e-5)


def test_unrolled_mode_equals_explicit_applications(device):
    block = IFRBlock(channels=8, num_groups=4).to(device)
    x = torch.randn(3, 8, 5, 5, device=device)
    layer = EquilibriumRefinement(block, mode="unrolled", num_unrolled=4)
    z = torch.zeros_like(x)
    for _ in range(4):
        z = block(z, x)
    assert torch.equal(layer(x), z)
    assert layer.last_stats is None


def test_scheduled_mode_switches_at_pretrained_steps(device):
    block = IFRBlock(channels=8, num_groups=4, weight_norm=True).to(device)
    layer = EquilibriumRefinement(block, mode="scheduled", num_unrolled=4, pretrained_steps=100,
                                  solver=SolverConfig("broyden", max_iter=6)).train()
    x = torch.randn(2, 8, 5, 5, device=device)
    assert layer.resolve_mode(0) == layer.resolve_mode(99) == "unrolled"
    assert layer.resolve_mode(100) == layer.resolve_mode(10_000) == "implicit"
    unrolled = layer(x, iteration=99)
    assert layer.last_stats is None
    assert torch.equal(unrolled, EquilibriumRefinement(block, mode="unrolled", num_unrolled=4)(x))
    layer(x, iteration=100)
    assert layer.last_stats is not None and layer.last_stats.iterations >= 1
    with pytest.raises(ValueError, match="iteration"):
        layer(x)
    layer.eval()
    assert layer.resolve_mode(None) == layer.resolve_mode(5) == "implicit"


def test_inference_returns_the_lowest_residual_iterate(device):
    block = IFRBlock(channels=8, num_groups=4, weight_norm=True).to(device).eval()
    solver = SolverConfig("broyden", max_iter=5, tol=0.0, stop_mode="abs")
    layer = EquilibriumRefinement(block, mode="implicit", solver=solver).eval()
    x = torch.randn(2, 8, 5, 5, device=device)
    with torch.no_grad():
        z = layer(x)
        expected, _ = solver.solve(lambda z: block(z, x), torch.zeros_like(x))
    assert torch.equal(z, expected)
    residual = (block(z, x) - z).flatten(1).norm(dim=1)
    assert torch.allclose(residual, layer.last_stats.abs_residual, rtol=1e-4)
    assert torch.equal(layer.last_stats.trace.min(dim=0).values, layer.last_stats.abs_residual)


@pytest.mark.parametrize("mode", ["implicit", "unrolled"])
def test_empty_batch(mode, device):
    block = IFRBlock(channels=8, num_groups=4, weight_norm=True).to(device)
    layer = EquilibriumRefinement(block, mode=mode).train()
    x = torch.zeros(0, 8, 5, 5, device=device, requires_grad=True)
    z = layer(x)
    assert z.shape == (0, 8, 5, 5)
    z.sum().backward()
    with torch.no_grad():
        assert layer.eval()(x).shape == (0, 8, 5, 5)


def test_layer_validates_arguments():
    with pytest.raises(ValueError, match="mode"):
        EquilibriumRefinement(nn.Identity(), mode="explicit")
    with pytest.raises(ValueError, match="num_unrolled"):
        EquilibriumRefinement(nn.Identity(), num_unrolled=0)


@pytest.mark.parametrize("channels, num_groups", [(256, 3), (16, 0), (0, 4)])
def test_block_refuses_groups_that_do_not_divide_its_channels_at_construction(channels, num_groups):
    with pytest.raises(ValueError, match=rf"IFRBlock: num_groups \({num_groups}\) must be a positive divisor of "
                                         rf"channels \({channels}\)"):
        IFRBlock(channels, num_groups)
