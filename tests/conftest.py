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


@pytest.fixture(scope="session")
def val_subset(datasets_root):
    """The first 10 images of the synthetic validation split, registered as ``helpers.VAL_SUBSET``."""
    from helpers import VAL_SUBSET
    from ifr.data import get_dataset_dicts, get_metadata, register_dataset, registered_datasets

    if VAL_SUBSET not in registered_datasets():
        register_dataset(VAL_SUBSET, lambda: get_dataset_dicts("synthetic_shapes_val")[:10],
                         lambda: get_metadata("synthetic_shapes_val"))
    return VAL_SUBSET
