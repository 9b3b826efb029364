from setuptools import find_packages, setup

setup(
    name="gkd_jax",
    version="0.1.0",
    description="On-policy knowledge distillation (GKD) of language models in JAX/Flax NNX",
    packages=find_packages(include=["gkd_jax", "gkd_jax.*"]),
    package_data={"gkd_jax": ["assets/**/*"]},
    include_package_data=True,
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
    ],
    extras_require={
        "test": ["pytest>=8", "ruff>=0.6", "scipy>=1.11"],
    },
)
