"""SRPO's training: DPO on the pairs file through TRL's `DPOTrainer`, with RL's own prompts.

The prompt DPO sees is token-identical to the one RL samples from: each pair's prompt is rendered by the
warm start's `build_examples` (the `QISafeDataset` messages and image resizing, verl's chat template and
processor call), and the rendered text and the resized image go to TRL's vision collator, which makes the
same processor call. Answers are tokenised on their own with the template's end-of-turn token, as the
warm start tokenises its targets. `tests/test_srpo.py` checks both.

The output is a complete checkpoint (weights, processor, chat template, the starting policy's generation
config) that `saferl.train` and `saferl.eval` load as they load the warm start.
"""

from __future__ import annotations

import copy
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from saferl.data.schema import rows_to_table
from saferl.models.checkpoint import check_checkpoint_dir, load_vlm, save_vlm
from saferl.warm_start import build_examples, end_of_turn

from .pairs import read_pairs

logger = logging.getLogger("saferl.srpo")

MARKER = "saferl_srpo.json"


def pairs_as_data(rows: list[dict[str, Any]], path: Path) -> Path:
    """The pairs' prompts as a QI-Safe-10K file (one row per pair, id = pair id), for `build_examples`."""
    import pyarrow.parquet as pq

    data = []
    for row in rows:
        objects = row.get("image_objects")
        data.append(
            {
                "id": row["pair_id"],
                "image": row["image"],
                "question": row["question"],
                "safety_label": row["safety_label"],
                "category": row["category"],
                "source": "srpo",
                "split": "train",
                "reference": row["chosen"],
                "image_objects": json.loads(objects) if isinstance(objects, str) else (objects or []),
            }
        )
    pq.write_table(rows_to_table(data), path)
    return path


def preference_dataset(
    pairs_file: str | Path, processor: Any, data_config: DictConfig | dict | None = None
) -> Any:
    """The pairs as TRL's vision preference dataset: prompt (chat-templated text), images, chosen and
    rejected (each closed with the template's end-of-turn token)."""
    from datasets import Dataset

    rows = read_pairs(pairs_file)
    if not rows:
        raise ValueError(f"{pairs_file}: no pairs to train on")
    by_id = {r["pair_id"]: r for r in rows}
    eot = end_of_turn(processor)
    with tempfile.TemporaryDirectory(prefix="saferl-srpo-") as scratch:
        examples = build_examples(
            pairs_as_data(rows, Path(scratch) / "pairs.parquet"), processor, data_config
        )
    dropped = len(rows) - len(examples)
    if dropped:  # the dataset's overlong-prompt filter: say so, never lose pairs silently
        logger.warning(
            "srpo: %d of %d pairs have a prompt over data.max_prompt_length; not trained", dropped, len(rows)
        )
    records = []
    for example in examples:
        pair = by_id[example.row["sample_id"]]
        records.append(
            {
                "prompt": example.prompt_text,
                "images": example.images,
                "chosen": pair["chosen"] + eot,
                "rejected": pair["rejected"] + eot,
            }
        )
    return Dataset.from_list(records)


def dpo_args(cfg: DictConfig, output_dir: Path) -> Any:
    """TRL's `DPOConfig` from `saferl.srpo.dpo`: only the keys saferl documents, the rest TRL's defaults."""
    import torch
    from trl import DPOConfig

    return DPOConfig(
        output_dir=str(output_dir),
        beta=float(cfg.beta),
        loss_type=[str(cfg.loss_type)],
        learning_rate=float(cfg.lr),
        lr_scheduler_type="constant",
        max_steps=int(cfg.steps),
        per_device_train_batch_size=int(cfg.batch_size),
        max_length=None if cfg.max_length is None else int(cfg.max_length),
        seed=int(cfg.seed),
        data_seed=int(cfg.seed),
        use_cpu=not torch.cuda.is_available(),
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),  # mixed precision on GPUs
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_dropout=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
    )


def quiet_progress() -> Any:
    """transformers' progress bar without the dict it prints at every logging step (100 lines for a tiny
    run): the step's loss and reward margin go on the bar, every step's log to `dpo_log.jsonl`."""
    from transformers.trainer_callback import ProgressCallback

    class QuietProgress(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and self.training_bar is not None and logs:
                shown = {k: f"{logs[k]:.3g}" for k in ("loss", "rewards/margins") if k in logs}
                self.training_bar.set_postfix(shown, refresh=False)

    return QuietProgress


def train_dpo(
    policy: str | Path,
    pairs_file: str | Path,
    cfg: DictConfig,
    out: str | Path,
    data_config: DictConfig | dict | None = None,
    fingerprint: str | None = None,
) -> tuple[Path, list[dict[str, float]]]:
    """DPO from `policy` on the pairs, against `cfg.reference` (default: the starting policy, frozen);
    writes a complete checkpoint to `out` and returns it with TRL's log per step."""
    from trl import DPOTrainer

    processor, model = load_vlm(policy)
    # TRL aligns the model's special token ids to the tokenizer's (one eos, no bos) and turns the KV cache
    # off for training; the checkpoint keeps the policy's own config, so it generates as the policy did.
    config, generation_config = copy.deepcopy(model.config), copy.deepcopy(model.generation_config)
    reference = None
    if cfg.get("reference"):
        _, reference = load_vlm(cfg.reference)
    dataset = preference_dataset(pairs_file, processor, data_config)
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="saferl-srpo-trl-") as scratch:
        trainer = DPOTrainer(
            model=model,
            ref_model=reference,
            args=dpo_args(cfg, Path(scratch)),
            train_dataset=dataset,
            processing_class=processor,
        )
        from transformers.trainer_callback import ProgressCallback

        if trainer.pop_callback(ProgressCallback) is not None:
            trainer.add_callback(quiet_progress())
        trainer.train()
    history = [h for h in trainer.state.log_history if "loss" in h]
    accelerator = trainer.accelerator
    if not accelerator.is_main_process:  # under `accelerate launch`, one process writes the checkpoint
        accelerator.wait_for_everyone()
        return out, history
    model = accelerator.unwrap_model(trainer.model).eval()
    model.config, model.generation_config = config, generation_config
    save_vlm(model, processor, out)
    check_checkpoint_dir(out)
    (out / MARKER).write_text(
        json.dumps(
            {
                "fingerprint": fingerprint,
                "policy": str(policy),
                "pairs": str(pairs_file),
                "pairs_count": len(dataset),
                "dpo": OmegaConf.to_container(cfg, resolve=True),
            },
            indent=2,
        )
        + "\n"
    )
    accelerator.wait_for_everyone()
    return out, history
