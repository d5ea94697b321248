"""Command-line entry points ``pods_train`` and ``pods_test`` (run inside an experiment folder)."""
