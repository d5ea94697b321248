"""Detection models built on torchvision ops and the ``ifr.deq`` core."""
