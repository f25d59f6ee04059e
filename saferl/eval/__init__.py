"""Evaluation: the policy under test on safety benchmarks, judged by the project's judges.

`python -m saferl.eval +exp=NAME eval.checkpoints=[...] eval.benchmarks=[...] eval.output_dir=DIR`.
Benchmarks are read by adapters (`saferl.data.benchmarks`) into QI-Safe-10K-shaped rows, so generation
and judging are the training path's own (the same dataset class, agent loop, servers and reward scorer).
"""
