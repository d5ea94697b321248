import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def datasets_root(tmp_path_factory):
    """IFR_DATASETS pointing at a per-session folder (the synthetic dataset is generated there once)."""
    import os

    root = tmp_path_factory.mktemp("datasets")
    previous = os.environ.get("IFR_DATASETS")
    os.environ["IFR_DATASETS"] = str(root)
    yield root
    if previous is None:
        del os.environ["IFR_DATASETS"]
    else:
        os.environ["IFR_DATASETS"] = previous
