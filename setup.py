from setuptools import find_packages, setup

setup(
    name="ifr",
    version="0.1.0",
    description="Implicit Feature Refinement (IFR) for instance segmentation, on torch + torchvision",
    python_requires=">=3.10",
    packages=find_packages(include=["ifr", "ifr.*"]),
    # torch/torchvision are pinned: this pair is the one the project is tested with and the one the
    # build machines provide locally (other versions download several GB or fail to import together).
    install_requires=[
        "torch==2.14.1",
        "torchvision==0.29.1",
        "numpy",
        "matplotlib>=3.8",
        "pillow",
        "pycocotools>=2.0.7",
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
