import os

import pytest
import torch
from helpers import FOLDERS, ROOT


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _checkout_entries():
    """What the checkout's root and experiment folders hold (their own entries, not the trees below)."""
    folders = [ROOT, *(os.path.join(ROOT, name) for name in FOLDERS.values())]
    return {os.path.join(folder, entry) for folder in folders for entry in os.listdir(folder)
            if entry != "__pycache__"}


@pytest.fixture(autouse=True)
def _checkout_untouched():
    """Tests write under tmp_path only: a run's `log` link or `output` folder in the checkout would be
    copied by every later test that copies an experiment folder, and would outlive the suite."""
    before = _checkout_entries()
    yield
    added = sorted(_checkout_entries() - before)
    assert not added, f"the test wrote into the checkout: {added}"


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device here (torch.cuda.is_available() is False)"))])
def device(request):
    """The device a head, solver or model test runs on: the CPU, and CUDA where torch sees a GPU
    (``pytest -k cuda`` selects those cases). CUDA runs with TF32 off, so that the tolerances these
    tests state for float32 hold there too (TF32 is not what they check)."""
    if request.param == "cpu":
        yield torch.device("cpu")
        return
    matmul_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            yield torch.device("cuda")
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul_tf32


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
