"""Install with ``pip install -e .`` (add ``[test]`` for the test suite)."""

from setuptools import find_packages, setup

setup(
    name="biam",
    version="0.1.0",
    description="BiAM (ICCV 2021) multi-label zero-shot image tagging, rebuilt for speed and reproducibility",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=find_packages(include=["biam", "biam.*"]),
    install_requires=[
        "torch>=2.6",
        "torchvision>=0.21",
        "numpy>=1.22",
        "h5py>=3.6",
        "yacs>=0.1.8",
        "tqdm>=4.60",
        "matplotlib>=3.5",
        "pillow>=9.0",
    ],
    extras_require={
        # CLIP backbones and text encoders (docs/methods.md); in [test] so CI runs their tests.
        "clip": ["open-clip-torch>=2.24"],
        "test": ["pytest>=7", "scikit-learn>=1.0", "ruff>=0.6", "open-clip-torch>=2.24"],
        # Training writes TensorBoard event files to OUTPUT_DIR/tb when this is installed.
        "tb": ["tensorboard>=2.10"],
    },
    entry_points={
        "console_scripts": [
            "biam-train=biam.cli.train:main",
            "biam-evaluate=biam.cli.evaluate:main",
            "biam-convert=biam.cli.convert:main",
            "biam-predict=biam.cli.predict:main",
            "biam-checksums=biam.cli.checksums:main",
            "biam-synthetic=biam.cli.synthetic:main",
            "biam-demo-shapes=biam.cli.demo_shapes:main",
            "biam-extract-nus-wide=biam.cli.extract_nus_wide:main",
            "biam-extract-openimages=biam.cli.extract_openimages:main",
            "biam-extract-own=biam.cli.extract_own:main",
            "biam-embed-labels=biam.cli.embed_labels:main",
            "biam-compare=biam.cli.compare:main",
            "biam-benchmark=biam.benchmark:main",
        ]
    },
)
