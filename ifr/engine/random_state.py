"""The random number generators' states of every process, as a checkpointable object, so a resumed
run draws the same random numbers (RPN / RoI sampling) as an uninterrupted one."""
from __future__ import annotations

import logging
import random

import numpy as np
import torch

from ifr.utils import comm

logger = logging.getLogger(__name__)


class RandomStates:
    """``state_dict()``: one entry per rank (gathered: call it on every process);
    ``load_state_dict()``: each process takes its own rank's entry.

    ``device``: the run's device. The CUDA generator's state is kept for a CUDA device only: a CPU run
    on a machine with GPUs must not create a CUDA context (on GPU 0, in every process) to read it."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)

    def state_dict(self) -> list[dict]:
        name, key, position, has_gauss, gauss = np.random.get_state()
        # plain numbers and tensors only, so checkpoints load with torch.load(weights_only=True)
        own = {"python": random.getstate(), "numpy": [name, torch.from_numpy(key.astype(np.int64)), position,
                                                       has_gauss, gauss], "torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            own["cuda"] = torch.cuda.get_rng_state(self.device)
        return comm.all_gather(own)

    def load_state_dict(self, states: list[dict]) -> None:
        if len(states) != comm.get_world_size():
            logger.warning("the checkpoint holds random states of %d processes, this run has %d: random draws "
                           "continue from fresh seeds, so the resumed run is not bit-identical", len(states),
                           comm.get_world_size())
            return
        own = states[comm.get_rank()]
        random.setstate(own["python"])
        name, key, position, has_gauss, gauss = own["numpy"]
        np.random.set_state((name, key.numpy().astype(np.uint32), position, has_gauss, gauss))
        torch.set_rng_state(own["torch"])
        if "cuda" in own and self.device.type == "cuda":
            torch.cuda.set_rng_state(own["cuda"], self.device)
