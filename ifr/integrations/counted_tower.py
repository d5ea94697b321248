"""A ``RefinementTower`` for models that do not tell their heads the training iteration (torchvision's).

torchvision calls its heads as ``head(features)``; ``CountedTower`` counts its own iteration: ``step`` (a
buffer, saved in the state dict) advances by one at every training-mode call; with ``count_steps=False``
the user sets it (``tower.step.fill_(iteration)``) instead, e.g. to count optimizer steps under gradient
accumulation. The IFR schedule uses the unrolled form while ``step < pretrained_steps`` and the implicit
fixed point afterwards and at inference.

``tower_settings`` turns the ``replace_*`` calls' keyword arguments (the mask head's MODEL.ROI_MASK_HEAD
settings in lower case) into the tower's constructor arguments, so every integration is configured the
same way.
"""
from __future__ import annotations

import torch

from ifr.deq import ImplicitBackward, PhantomBackward, RefinementTower, SolverConfig
from ifr.deq.solvers import CUDA_CHECK_PERIOD
from ifr.deq.tower import TowerConfigError

HEADS = ("explicit", "weight_sharing", "ifr")
BACKWARDS = ("implicit", "phantom")


class CountedTower(RefinementTower):
    """``RefinementTower`` called as ``tower(x)``, (N, C, H, W) -> (N, C, H, W), that counts its training
    calls in ``step`` (see the module docstring) and hands it to the IFR schedule."""

    def __init__(self, channels: int, num_layers: int = 4, form: str = "ifr", *, count_steps: bool = True,
                 **tower_arguments):
        super().__init__(channels, num_layers, form, **tower_arguments)
        self.count_steps = count_steps
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(features)
        out = super().forward(features, iteration=int(self.step))
        if self.count_steps:
            self.step += 1
        return out

    @property
    def mode(self) -> str:
        """The mode the next call uses: "explicit", "unrolled" or "implicit"."""
        if self.refinement is None:
            return "explicit"
        return self.refinement.resolve_mode(int(self.step) if self.training else None)


def tower_settings(owner: str, head: str, *, pretrained_steps: int = 0, f_solver: str = "broyden",
                   f_thres: int = 15, f_tol: float = 1e-4, b_solver: str = "broyden", b_thres: int = 15,
                   b_tol: float = 1e-4, stop_mode: str = "rel", solver_options: dict | None = None,
                   backward: str = "implicit", phantom_steps: int = 1, phantom_damping: float = 1.0,
                   allow_tf32: bool = False, cuda_check_period: int = CUDA_CHECK_PERIOD,
                   jacobian_weight: float = 0.0, jacobian_frequency: float = 1.0, jacobian_probes: int = 1) -> dict:
    """The ``RefinementTower`` keyword arguments of an integration's settings (``owner`` names the call
    in errors); the "ifr" form's solvers get ``solver_options`` both (e.g. ``{"memory": 15}``)."""
    if head not in HEADS:
        raise TowerConfigError(f"{owner}: head must be one of {HEADS}, got {head!r}")
    if backward not in BACKWARDS:
        raise TowerConfigError(f"{owner}: backward must be one of {BACKWARDS}, got {backward!r}")
    if head != "ifr":
        return {}
    options = dict(solver_options or {})
    try:
        solver = SolverConfig(f_solver, f_thres, f_tol, stop_mode, options, cuda_check_period)
        gradient = (ImplicitBackward(SolverConfig(b_solver, b_thres, b_tol, stop_mode, options, cuda_check_period),
                                     allow_tf32=allow_tf32)
                    if backward == "implicit" else PhantomBackward(phantom_steps, phantom_damping))
    except ValueError as e:
        raise TowerConfigError(f"{owner}: {e}") from None
    return dict(pretrained_steps=pretrained_steps, solver=solver, backward=gradient, allow_tf32=allow_tf32,
                jacobian_weight=jacobian_weight, jacobian_frequency=jacobian_frequency,
                jacobian_probes=jacobian_probes)
