"""Optimizers and LR schedules by name, and gradient accumulation over batch subdivisions."""
import logging
import math

import pytest
import torch
from torch import nn

from ifr.config import ConfigError, RCNNFPNConfig
from ifr.engine.train_loop import SimpleTrainer
from ifr.solver import build_lr_scheduler, build_optimizer, warmup_cosine_factor


class _Regression(nn.Module):
    """Detector-shaped toy: ``model(images, iteration=...)`` -> a dict of losses averaged over images."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 1)
        self.norm = nn.GroupNorm(1, 1)

    def forward(self, images, iteration=None):
        x = torch.stack([im["x"] for im in images])
        y = torch.stack([im["y"] for im in images])
        out = self.linear(x)
        return {"loss_a": ((out - y) ** 2).mean(), "loss_b": (out.abs() * self.norm.weight).mean()}


def _config(**solver):
    cfg = RCNNFPNConfig()
    cfg.SOLVER.merge(solver)
    return cfg


def test_adamw_uses_its_keys_and_cvpods_parameter_groups():
    cfg = _config(OPTIMIZER=dict(NAME="AdamW", BASE_LR=0.1, BETAS=(0.8, 0.9), EPS=1e-6, WEIGHT_DECAY=0.05,
                                 WEIGHT_DECAY_NORM=0.0, BIAS_LR_FACTOR=2.0))
    optimizer = build_optimizer(cfg, _Regression())
    assert isinstance(optimizer, torch.optim.AdamW)
    groups = {(g["lr"], g["weight_decay"]) for g in optimizer.param_groups}
    assert groups == {(0.1, 0.05), (0.2, 0.05), (0.1, 0.0), (0.2, 0.0)}  # weights, biases, norm weight, norm bias
    assert all(g["betas"] == (0.8, 0.9) and g["eps"] == 1e-6 for g in optimizer.param_groups)
    assert isinstance(build_optimizer(_config(), _Regression()), torch.optim.SGD)


def test_unknown_names_are_config_errors_and_unread_settings_are_warned(caplog):
    with pytest.raises(ConfigError, match="SOLVER.OPTIMIZER.NAME 'Adam' is not available.*AdamW"):
        build_optimizer(_config(OPTIMIZER=dict(NAME="Adam")), _Regression())
    optimizer = torch.optim.SGD(_Regression().parameters(), lr=1.0)
    with pytest.raises(ConfigError, match="LR_SCHEDULER.NAME 'PolyLR' is not available"):
        build_lr_scheduler(_config(LR_SCHEDULER=dict(NAME="PolyLR")), optimizer)
    with caplog.at_level(logging.WARNING):
        build_optimizer(_config(OPTIMIZER=dict(NAME="D2SGD", BETAS=(0.5, 0.9))), _Regression())
        build_lr_scheduler(_config(LR_SCHEDULER=dict(NAME="WarmupCosineLR", STEPS=(5,))), optimizer)
    assert "SOLVER.OPTIMIZER.BETAS is set but D2SGD does not read it" in caplog.text
    assert "SOLVER.LR_SCHEDULER.STEPS is set but WarmupCosineLR does not read it" in caplog.text


def test_warmup_cosine_lr_follows_cvpods_formula():
    cfg = _config(LR_SCHEDULER=dict(NAME="WarmupCosineLR", MAX_ITER=100, WARMUP_ITERS=10, WARMUP_FACTOR=0.1))
    optimizer = torch.optim.SGD(_Regression().parameters(), lr=2.0)
    scheduler = build_lr_scheduler(cfg, optimizer)
    lrs = []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    for it in (0, 5, 10, 50, 99):
        warm = 0.1 * (1 - it / 10) + it / 10 if it < 10 else 1.0
        assert lrs[it] == pytest.approx(2.0 * warm * 0.5 * (1 + math.cos(math.pi * it / 100)), rel=1e-12)
    assert warmup_cosine_factor(50, 100, 0.1, 10) == pytest.approx(0.5)


def _step(subdivisions: int, images) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = _Regression()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    trainer = SimpleTrainer(model, [images], optimizer, batch_subdivisions=subdivisions)
    trainer.train(0, 1)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, trainer.storage


def test_batch_subdivisions_give_the_gradients_of_the_whole_batch():
    generator = torch.Generator().manual_seed(1)
    images = [{"x": torch.randn(3, generator=generator) * 10 + 30, "y": torch.randn(1, generator=generator)}
              for _ in range(4)]
    whole, whole_storage = _step(1, images)
    split, split_storage = _step(2, images)
    quarters, _ = _step(4, images)
    for key in whole:
        assert torch.allclose(split[key], whole[key], rtol=1e-6, atol=1e-7), key
        assert torch.allclose(quarters[key], whole[key], rtol=1e-6, atol=1e-7), key
    assert not torch.equal(whole["linear.weight"], _Regression().linear.weight)
    assert whole_storage.latest("total_loss") == pytest.approx(split_storage.latest("total_loss"), rel=1e-6)
    with pytest.raises(ConfigError, match="BATCH_SUBDIVISIONS \\(3\\) must divide the 4 images"):
        _step(3, images)
