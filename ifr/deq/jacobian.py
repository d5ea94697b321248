"""Jacobian regularisation of equilibrium models (Bai, Koltun and Kolter, ICML 2021): a Hutchinson
estimate of the Frobenius norm of the block's Jacobian at the equilibrium."""
from __future__ import annotations

import torch


def jacobian_frobenius_estimate(f_out: torch.Tensor, z: torch.Tensor, probes: int = 1,
                                generator: torch.Generator | None = None) -> torch.Tensor:
    """Unbiased estimate of ``||df/dz||_F^2 / z.numel()`` from ``probes`` vector-Jacobian products.

    ``f_out = f(z)`` must have a graph back to ``z`` (which requires grad). For v ~ N(0, I),
    E ||v^T J||^2 = ||J||_F^2; the estimate averages ``probes`` such products and is divided by the
    number of entries of z (the paper's normalisation, so the term does not grow with the batch).
    Built with ``create_graph``, so it can be minimised: its gradient reaches f's parameters.
    For a batch of independent samples J is block-diagonal and this is the mean over samples.
    """
    if probes < 1:
        raise ValueError(f"probes must be >= 1, got {probes}")
    total = f_out.new_zeros(())
    for _ in range(probes):
        v = torch.randn(f_out.shape, dtype=f_out.dtype, device=f_out.device, generator=generator)
        vjp, = torch.autograd.grad(f_out, z, v, retain_graph=True, create_graph=True)
        total = total + vjp.pow(2).sum()
    return total / (probes * z.numel())
