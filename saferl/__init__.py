"""saferl: online RL that teaches vision-language reasoning models to reason safely.

SaFeR-VLM's method (QI-Safe-10K, safety-aware rollout with reflection, a structured multi-criteria
reward, GRPO) with PST's safety policies, built on verl, vLLM and Ray.
"""

__version__ = "0.1.0"
