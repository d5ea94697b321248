"""ifr.deq.RefinementTower: its three forms, construction checks, Jacobian regularisation, the FPN
levels solved jointly, and the implicit gradient against autograd through the unrolled iteration."""
import pytest
import torch

from ifr.deq import EquilibriumRefinement, RefinementTower, SolverConfig, TowerConfigError
from ifr.deq.backward import ImplicitBackward, PhantomBackward
from ifr.deq.weight_norm import WeightNormConv2d
from ifr.errors import UserError
from ifr.modeling.mask_head import RefinementMaskHead


@pytest.mark.parametrize("form,norm,keys", [
    ("explicit", "group", {"layers.0.0.weight", "layers.0.1.weight", "layers.0.1.bias"}),
    ("explicit", "batch", {"layers.0.0.weight", "layers.0.1.running_mean"}),
    ("explicit", "none", {"layers.0.0.weight", "layers.0.0.bias"}),
    ("weight_sharing", "batch", {"refinement.block.conv1.weight", "refinement.block.gn3.bias"}),
    ("ifr", "none", {"refinement.block.conv1.weight_g", "refinement.block.conv1.weight_v"}),
])
def test_each_form_maps_the_tower_shape_and_trains(form, norm, keys):
    torch.manual_seed(0)
    tower = RefinementTower(8, 3, form, norm=norm, num_groups=4)
    assert tower.form == form and keys <= set(tower.state_dict())
    convs = [m for m in tower.modules() if isinstance(m, (torch.nn.Conv2d, WeightNormConv2d))]
    assert len(convs) == (3 if form == "explicit" else 2)  # the stack's own layers, or one shared block's two
    x = torch.randn(3, 8, 5, 6, requires_grad=True)
    out = tower.train()(x, iteration=0)
    assert out.shape == x.shape
    out.square().mean().backward()
    assert x.grad is not None and all(p.grad is not None for p in tower.parameters())
    with torch.no_grad():
        assert tower.eval()(torch.zeros(0, 8, 5, 6)).shape == (0, 8, 5, 6)
    assert (tower.solver_stats() != {}) == (form == "ifr")


def test_the_weight_sharing_form_is_its_block_applied_num_layers_times():
    tower = RefinementTower(8, 3, "weight_sharing", num_groups=2)
    x = torch.randn(2, 8, 4, 4)
    z = torch.zeros_like(x)
    for _ in range(3):
        z = tower.refinement.block(z, x)
    assert torch.equal(tower(x), z)


@pytest.mark.parametrize("arguments,message", [
    (dict(channels=30, num_groups=4), "num_groups=4 must be a positive divisor of the tower's 30 channels"),
    (dict(channels=8, num_groups=0), "num_groups=0 must be a positive divisor"),
    (dict(channels=8, form="deq"), "form must be one of"),
    (dict(channels=8, norm="layer"), "norm must be one of"),
    (dict(channels=8, num_layers=0), "num_layers .* must be >= 1"),
    (dict(channels=8, backward=PhantomBackward(), jacobian_weight=1.0), "jacobian_weight > 0 needs the implicit"),
])
def test_construction_refuses_what_the_tower_cannot_be(arguments, message):
    with pytest.raises(TowerConfigError, match=message) as info:
        RefinementTower(**{"num_groups": 4, **arguments})
    assert isinstance(info.value, UserError) and isinstance(info.value, ValueError)
    assert str(info.value).startswith("RefinementTower: ")


def test_an_explicit_tower_without_groupnorm_takes_any_groups():
    RefinementTower(30, 2, "explicit", norm="batch", num_groups=4)


def test_jacobian_regularisation_on_the_scheduled_fraction_of_iterations():
    torch.manual_seed(0)
    tower = RefinementTower(8, 2, "ifr", num_groups=4, jacobian_weight=2.0, jacobian_frequency=0.5).train()
    x = torch.randn(2, 8, 4, 4)
    losses = []
    for iteration in range(4):
        tower(x, iteration=iteration)
        losses.append(tower.last_jacobian_loss)
    assert [loss is not None for loss in losses] == [False, True, False, True]
    assert losses[1].requires_grad and float(losses[1]) > 0
    tower.eval()(x)
    assert tower.last_jacobian_loss is None


def test_the_mask_head_is_a_tower_around_its_refinement():
    refinement = EquilibriumRefinement(torch.nn.Identity(), mode="unrolled")
    head = RefinementMaskHead(refinement, conv_dim=8, num_classes=3)
    assert isinstance(head, RefinementTower) and head.refinement is refinement and head.form == "weight_sharing"
    assert list(head.state_dict()) == ["deconv.weight", "deconv.bias", "predictor.weight", "predictor.bias"]


def _levels(generator, dtype=torch.float32):
    return [torch.randn(2, 8, size, size + 1, generator=generator, dtype=dtype) for size in (6, 3, 2)]


def test_levels_solved_jointly_reach_the_per_level_fixed_points():
    torch.manual_seed(0)
    solver = SolverConfig("broyden", max_iter=60, tol=1e-9)
    tower = RefinementTower(8, 4, "ifr", num_groups=4, solver=solver).double().eval()
    levels = _levels(torch.Generator().manual_seed(1), torch.float64)
    with torch.no_grad():
        joint = tower.forward_levels(levels)
        assert tower.refinement.last_stats.sample_steps.numel() == 2  # one solve per image
        separate = [tower(x) for x in levels]
    for a, b in zip(joint, separate):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-7)
    shared = RefinementTower(8, 4, "weight_sharing", num_groups=4).double()
    assert all(torch.equal(a, shared(x)) for a, x in zip(shared.forward_levels(levels), levels))


@pytest.mark.parametrize("joint", [False, True])
def test_the_implicit_gradient_equals_autograd_through_the_unrolled_iteration(joint):
    torch.manual_seed(0)
    tight = SolverConfig("broyden", max_iter=100, tol=1e-12)
    tower = RefinementTower(8, 4, "ifr", num_groups=4, solver=tight, backward=ImplicitBackward(tight)).double()
    with torch.no_grad():  # a more contractive block (|df/dz| halved), so that 80 unrolled steps reach z*
        tower.refinement.block.gn3.weight.mul_(0.5)
    levels = [x.requires_grad_() for x in _levels(torch.Generator().manual_seed(2), torch.float64)]
    weights = [torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64) for x in levels]

    def loss(outs):
        return sum((o * w).sum() for o, w in zip(outs, weights))

    tower.train()
    outs = tower.forward_levels(levels, iteration=0) if joint else [tower(x, iteration=0) for x in levels]
    assert tower.refinement.last_stats is not None
    loss(outs).backward()
    implicit = [x.grad.clone() for x in levels] + [p.grad.clone() for p in tower.parameters()]
    for t in levels + list(tower.parameters()):
        t.grad = None
    reference = EquilibriumRefinement(tower.refinement.block, mode="unrolled", num_unrolled=80)
    loss([reference(x) for x in levels]).backward()
    unrolled = [x.grad for x in levels] + [p.grad for p in tower.parameters()]
    for a, b in zip(implicit, unrolled):
        assert float((a - b).abs().max()) <= 1e-6 * float(b.abs().max())
