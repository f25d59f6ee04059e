"""PST's policy-guided SFT warm start: a short supervised stage on the policy-citing reference answers.

GRPO can only reinforce what the policy already samples. A randomly initialised (tiny) policy never
writes `<think>…</think>` followed by an answer, so nearly every reward in its first groups is the same
and there is little advantage to learn from. PST (policy-guided safety tuning) therefore starts RL from a
policy fine-tuned on answers that reason about the request and cite the safety policy: here, the data's
`reference` column (a refusal with an alternative for unsafe rows, a helpful answer for safe ones).
The stage is kept short on purpose: it must teach the *format*, not solve the task, so the policy still
answers harmful prompts often enough for RL to have failures to correct.

Two things make the warm-started policy useful for RL rather than merely trained:

- the SFT prompt is token-identical to the RL prompt: rows are rendered by the dataset's prompt builder
  (`saferl.data.prompts`), exactly as verl's agent loop renders them;
- the loss is on the assistant tokens only (the reference and the end-of-turn token), so the policy
  learns to answer and to stop, and learns nothing about predicting prompts.

    python -m saferl.warm_start --model DIR --train FILE --out DIR [key=value ...]
    python -m saferl.warm_start --measure [--exp tiny] [--steps 0,50,100,200,300,400] [key=value ...]

The package, one concept per module: `examples` (what is imitated), `sft` (the training loop), `cache`
(fingerprint, marker, atomic output), `stage` (the stage itself), `measure` (what a step count buys).
"""

from .cache import MARKER, hash_model_dir, is_done, read_marker
from .examples import SFTExample, build_examples, end_of_turn, stage_examples
from .sft import IGNORE_INDEX, collate, train_sft
from .stage import load_warm_start_config, warm_start

__all__ = [
    "IGNORE_INDEX",
    "MARKER",
    "SFTExample",
    "build_examples",
    "collate",
    "end_of_turn",
    "hash_model_dir",
    "is_done",
    "load_warm_start_config",
    "read_marker",
    "stage_examples",
    "train_sft",
    "warm_start",
]
