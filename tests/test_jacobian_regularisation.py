"""Jacobian regularisation of the IFR head: the Hutchinson estimator and the training term."""
import json
import os

import torch

from ifr.deq import IFRBlock, jacobian_frobenius_estimate
from ifr.tools import quickstart

from helpers import TINY


def test_the_estimator_is_unbiased_against_the_exact_frobenius_norm():
    torch.manual_seed(0)
    block = IFRBlock(8, num_groups=2, weight_norm=True).double()
    x = torch.randn(2, 8, 4, 4, dtype=torch.float64)
    z = torch.randn(2, 8, 4, 4, dtype=torch.float64, requires_grad=True)
    jacobian = torch.autograd.functional.jacobian(lambda t: block(t, x), z)  # (2, 8, 4, 4, 2, 8, 4, 4)
    exact = jacobian.pow(2).sum() / z.numel()
    f_out = block(z, x)
    estimate = jacobian_frobenius_estimate(f_out, z, probes=4000, generator=torch.Generator().manual_seed(1))
    assert abs(estimate.item() / exact.item() - 1) < 0.03
    single = [jacobian_frobenius_estimate(f_out, z).item() for _ in range(200)]
    assert abs(sum(single) / len(single) / exact.item() - 1) < 0.15  # one probe per step: unbiased, noisier


def test_minimising_the_estimate_makes_the_block_more_contractive():
    torch.manual_seed(0)
    block = IFRBlock(16, num_groups=4, weight_norm=True)
    x = torch.randn(4, 16, 8, 8)
    optimizer = torch.optim.SGD(block.parameters(), lr=0.5)

    def penalty(probes=1):
        z = torch.randn(4, 16, 8, 8, generator=torch.Generator().manual_seed(2)).requires_grad_()
        return jacobian_frobenius_estimate(block(z, x), z, probes, generator=torch.Generator().manual_seed(3))

    before = penalty(64).item()
    for _ in range(30):
        optimizer.zero_grad()
        penalty().backward()
        optimizer.step()
    assert penalty(64).item() < 0.7 * before


def test_the_regularised_head_trains_and_logs_its_term(tmp_path, monkeypatch, val_subset):
    monkeypatch.setenv("IFR_OUTPUT_ROOT", str(tmp_path))
    quickstart.main(["--max-iter", "6", "--no-progress", *TINY, "DATASETS.TEST", "()",
                     "MODEL.ROI_MASK_HEAD.PRETRAINED_STEPS", "0", "MODEL.ROI_MASK_HEAD.JACOBIAN_WEIGHT", "2.0",
                     "MODEL.ROI_MASK_HEAD.JACOBIAN_FREQUENCY", "0.5"])
    metrics = [json.loads(line) for line in open(os.path.join(str(tmp_path), "quickstart", "metrics.json"))]
    with_term = [m for m in metrics if "loss_jacobian" in m]
    assert len(with_term) == 3 and [m["iteration"] for m in with_term] == [1, 3, 5]  # every other iteration
    assert all(0 < m["loss_jacobian"] < 1e3 for m in with_term)
    losses = [m["total_loss"] for m in metrics if "total_loss" in m]
    assert losses[-1] < losses[0]
