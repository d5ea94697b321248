from setuptools import find_packages, setup

setup(
    name="ifr",
    version="0.1.0",
    description="Implicit Feature Refinement (IFR) for instance segmentation, on torch + torchvision",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["ifr", "ifr.*"]),
    # A range, so that `pip install -e .` keeps the torch (and its CUDA build) of the user's environment.
    # Lower bounds from the APIs used: transforms.v2 subclasses written against the public
    # Transform.make_params / transform hooks (torchvision 0.21, paired with torch 2.6), tv_tensors,
    # torch.load(weights_only=True) as the default, torch.amp.GradScaler(device). CI runs the suite on
    # both ends of the range: the newest tested pair (constraints.txt, which scripts/setup.sh installs)
    # on Python 3.11, and this lower bound (constraints-lower.txt) on Python 3.10, python_requires' bound.
    install_requires=[
        "torch>=2.6",
        "torchvision>=0.21",
        "numpy",
        "matplotlib>=3.8",
        "pillow",
        "pycocotools>=2.0.7",
        # COCO AP (ifr/evaluation/coco_evaluation.py): 1.8.0 is the release checked equal to pycocotools'
        # COCOeval (tests/test_coco_metrics.py) and benchmarked; below 2, whose API may change.
        "faster-coco-eval>=1.8.0,<2",
        "tabulate>=0.9",
        "tensorboard>=2.14",
        "tqdm>=4.60",
    ],
    entry_points={
        "console_scripts": [
            "pods_train=ifr.tools.train_net:main",
            "pods_test=ifr.tools.test_net:main",
            "pods_demo=ifr.tools.demo:main",
            "pods_analyze=ifr.tools.analyze_model:main",
        ],
    },
    # "bench": optional comparison rows in benchmarks/deq_bench.py (torchdeq's solvers on the same block).
    extras_require={"test": ["pytest>=8"], "bench": ["torchdeq==0.1.0"]},
)
