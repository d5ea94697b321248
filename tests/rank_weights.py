"""``pods_train`` whose processes each write the weights they trained to
``$IFR_TEST_RANK_WEIGHTS/rank<R>.pth``, so a test can check that the ranks of a several-machine job
trained the same model. Run as a script (``python rank_weights.py [pods_train arguments]``, also
under torchrun); with the variable unset it is plain ``pods_train``."""
import os
import sys

import torch

from ifr.engine import DefaultTrainer
from ifr.tools import train_net
from ifr.utils import comm

RANK_WEIGHTS = "IFR_TEST_RANK_WEIGHTS"

_train = DefaultTrainer.train


def _train_and_write_weights(self) -> None:
    _train(self)
    model = self.model.module if hasattr(self.model, "module") else self.model
    torch.save(model.state_dict(), os.path.join(os.environ[RANK_WEIGHTS], f"rank{comm.get_rank()}.pth"))


if os.environ.get(RANK_WEIGHTS):
    DefaultTrainer.train = _train_and_write_weights

if __name__ == "__main__":
    train_net.main(sys.argv[1:])
