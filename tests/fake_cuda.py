"""Makes spawned worker processes believe they run on a machine with one GPU.

A worker imports the module of the function it runs before it joins the process group; when that
module imports this one with ``IFR_TEST_REPORT_CUDA=1`` in the environment (set by a test before it
launches), ``torch.cuda`` reports one device there. The test process itself imported this module
earlier, without the variable, and is left as it is. This is how a CPU machine tests that the
launcher follows ``MODEL.DEVICE`` rather than what the machine has.
"""
import os

import torch

from ifr.tools import train_net

REPORT_CUDA = "IFR_TEST_REPORT_CUDA"

if os.environ.get(REPORT_CUDA) == "1":
    torch.cuda.is_available = lambda: True
    torch.cuda.device_count = lambda: 1


def train_worker(args) -> None:
    """``pods_train``'s worker, in a process that reports a GPU."""
    assert torch.cuda.is_available(), "the worker was started without the fake GPU"
    train_net.train_worker(args)
