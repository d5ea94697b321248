"""True float32 arithmetic inside the fixed-point solves.

On Ampere and later GPUs, cuDNN convolutions (and, if the user allowed it, matmuls) run by default in
TF32, with a 10-bit mantissa. A solve to a relative residual of 1e-4..1e-5 cannot get there when each
block evaluation carries ~1e-4 relative rounding: the residual stalls at that floor, the solve runs to
its step limit and never reports convergence. ``ieee_float32`` turns TF32 off for the code inside it
and restores the user's settings after, so the rest of the model keeps whatever the user chose.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch


def _precision_settings() -> list[tuple[object, str]]:
    """(object, attribute) of each TF32 switch this torch has, in its current API.

    torch >= 2.9 has per-backend ``fp32_precision`` ("ieee" / "tf32" / "none"); reading the legacy
    ``allow_tf32`` flags there raises when a user set the new ones, so only one API is used. cuDNN's
    RNN switch is set with the convolution's: while they differ, torch refuses to read the legacy flag.
    """
    backends = torch.backends
    if hasattr(backends.cudnn, "conv") and hasattr(backends.cudnn.conv, "fp32_precision"):
        return [(backends.cudnn.conv, "fp32_precision"), (backends.cudnn.rnn, "fp32_precision"),
                (backends.cuda.matmul, "fp32_precision")]
    return [(backends.cudnn, "allow_tf32"), (backends.cuda.matmul, "allow_tf32")]


def tf32_settings() -> tuple:
    """The current values of this torch's TF32 switches (see ``_precision_settings``): ("ieee" | "tf32" |
    "none", ...) on torch >= 2.9, (allow_tf32 of cuDNN, of CUDA matmuls) before."""
    return tuple(getattr(obj, name) for obj, name in _precision_settings())


def set_tf32(enabled: bool) -> None:
    """Sets torch's process-wide TF32 switches for cuDNN convolutions and CUDA matmuls (what a user's
    script would set), in the API this torch has."""
    for obj, name in _precision_settings():
        setattr(obj, name, ("tf32" if enabled else "ieee") if name == "fp32_precision" else enabled)


@contextlib.contextmanager
def ieee_float32(enabled: bool = True) -> Iterator[None]:
    """Within: cuDNN convolutions and CUDA matmuls in IEEE float32 (no TF32). ``enabled=False``
    changes nothing. No effect on the CPU, which has no TF32."""
    if not enabled:
        yield
        return
    settings = _precision_settings()
    saved = tf32_settings()
    try:
        set_tf32(False)
        yield
    finally:
        for (obj, name), value in zip(settings, saved):
            setattr(obj, name, value)
