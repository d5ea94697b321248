"""Identical RoIs solved once at test time (ifr.deq.sharing, EquilibriumRefinement.share_identical)
and the per-sample step counts every solver reports."""
import pytest
import torch

from ifr.data import get_dataset_dicts
from ifr.data.mapper import DatasetMapper
from ifr.deq import EquilibriumRefinement, IFRBlock, SolverConfig, distinct_samples
from ifr.modeling.inspection import find_refinement
from ifr.paths import EXPERIMENTS
from ifr.presets import small_model_overrides
from ifr.tools.experiment import load_experiment

from helpers import TINY


def test_distinct_samples_keeps_first_occurrences_in_batch_order():
    x = torch.tensor([[3.0, 1.0], [1.0, 2.0], [3.0, 1.0], [0.0, 0.0], [1.0, 2.0], [3.0, 1.0]])
    first, inverse = distinct_samples(x)
    assert first.tolist() == [0, 1, 3]
    assert inverse.tolist() == [0, 1, 0, 2, 1, 0]
    assert torch.equal(x[first][inverse], x)


def test_distinct_samples_compares_bits():
    x = torch.tensor([[0.0, 1.0], [-0.0, 1.0], [float("nan"), 1.0], [float("nan"), 1.0]])
    first, inverse = distinct_samples(x)
    assert first.tolist() == [0, 1, 2]  # -0.0 is not 0.0; the same NaN bits are the same sample
    assert inverse.tolist() == [0, 1, 2, 2]
    assert distinct_samples(torch.zeros(0, 4)).first.numel() == 0


def _layer(solver: str = "broyden", share: bool = True) -> EquilibriumRefinement:
    torch.manual_seed(0)
    block = IFRBlock(16, num_groups=4, weight_norm=True).to(memory_format=torch.channels_last)
    return EquilibriumRefinement(block, mode="implicit", share_identical=share,
                                 solver=SolverConfig(solver, max_iter=30, tol=1e-5)).eval()


def _rois_with_repeats() -> torch.Tensor:
    torch.manual_seed(1)
    distinct = torch.randn(5, 16, 6, 6) * 2 + 3
    return distinct[torch.tensor([0, 1, 0, 2, 3, 1, 4, 0])].contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("solver", ["broyden", "anderson", "fixed_point"])
def test_shared_solve_is_bit_identical_to_solving_every_roi(solver):
    x = _rois_with_repeats()
    shared_layer, every_layer = _layer(solver, share=True), _layer(solver, share=False)
    with torch.no_grad():
        shared, every = shared_layer(x), every_layer(x)
    assert shared_layer.last_solved == 5 and every_layer.last_solved == 8
    assert torch.equal(shared, every)
    assert shared.is_contiguous(memory_format=torch.channels_last)
    a, b = shared_layer.last_stats, every_layer.last_stats
    for name in ("abs_residual", "rel_residual", "converged", "sample_steps"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.trace.shape == b.trace.shape


def test_training_and_the_batch_global_solver_solve_every_roi():
    x = _rois_with_repeats()
    cvpods = _layer("broyden_cvpods")
    with torch.no_grad():
        cvpods(x)
    assert cvpods.last_solved == 8  # its stop test and returned iterate depend on the whole batch
    layer = _layer().train()
    layer(x.requires_grad_()).sum().backward()
    assert layer.last_solved == 8 and x.grad is not None


def test_sample_steps_count_the_steps_that_moved_each_sample():
    # z -> a z + b converges geometrically at rate a, so samples with larger a need more steps.
    rates = torch.tensor([0.0, 0.1, 0.5, 0.9]).view(4, 1)
    _, stats = SolverConfig("fixed_point", max_iter=50, tol=1e-6, stop_mode="abs").solve(
        lambda z: rates * z + 1.0, torch.zeros(4, 3))
    steps = stats.sample_steps.tolist()
    assert steps == sorted(steps) and steps[0] == 1 and steps[-1] == stats.iterations
    # the residual after k steps is |b| a^k (1 - a)^-1 ... the 0.5 sample needs about log(1e-6) / log(0.5) steps
    assert 19 <= steps[2] <= 22


def test_cascade_masks_are_bit_identical_with_shared_solves(val_subset):
    """The cascade's class-agnostic boxes give several detections with one pooled feature; they are
    solved once, and the masks equal those of solving every detection."""
    config, build_model = load_experiment(EXPERIMENTS["cascade"])
    config.merge(small_model_overrides(max_iter=10))
    config.merge_from_list([*TINY, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "TEST.DETECTIONS_PER_IMAGE", "100"])
    torch.manual_seed(0)
    model = build_model(config).eval()
    inputs = [DatasetMapper(config.INPUT.AUG.TEST_PIPELINES, config.INPUT.FORMAT, is_train=False)(
        get_dataset_dicts("synthetic_shapes_val")[0])]
    refinement = find_refinement(model)
    with torch.no_grad():
        shared = model(inputs)[0]["instances"]
        solved = refinement.last_solved
        refinement.share_identical = False
        every = model(inputs)[0]["instances"]
    assert solved < len(every["boxes"]) == refinement.last_solved == 100
    assert torch.equal(shared["boxes"], every["boxes"]) and torch.equal(shared["masks"], every["masks"])
