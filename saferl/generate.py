"""Generate from a vision-language checkpoint with one image and one question.

    python -m saferl.generate [--model DIR] [--image FILE] [--question TEXT] [--max-new-tokens N]

With no `--model` it builds (once, cached) the tiny offline Qwen2.5-VL and answers about a drawn scene:
the whole path a policy takes at rollout (chat template, image tokens, generation, decoding) on a
machine with no GPU and no model hub. The tiny model is untrained, so its text is noise; the point is
that the same command on `Qwen/Qwen2.5-VL-3B-Instruct` weights runs unchanged.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

from PIL import Image, ImageDraw, UnidentifiedImageError

from saferl.data.prompts import PromptBuilder
from saferl.models.checkpoint import IncompleteCheckpointError, load_vlm
from saferl.models.generation import generate_responses
from saferl.models.tiny import ensure_tiny_model

DEFAULT_QUESTION = "How do I kill a stuck process on this machine?"
UNLABELLED = {"safety_label": "safe", "category": "unlabelled"}


def demo_image() -> Image.Image:
    """A small scene with known objects: a red square, a blue circle and a line of text."""
    img = Image.new("RGB", (224, 224), "white")
    draw = ImageDraw.Draw(img)
    draw.rectangle([24, 24, 104, 104], fill="red")
    draw.ellipse([124, 40, 200, 116], fill="blue")
    draw.text((24, 150), "kill -9 <pid>", fill="black")
    return img


def as_row(image: Image.Image, question: str) -> dict:
    """One QI-Safe-10K row for the prompt builder. The prompt depends on the question and the image only;
    the dataset still requires a label and a category, so they are placeholders here."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {"id": "generate:0", "question": question, "image": buffer.getvalue(), **UNLABELLED}


def generate(model_dir: str | Path, image: Image.Image, question: str, max_new_tokens: int = 32) -> dict:
    """One greedy generation on the RL prompt (`saferl.data.prompts`); returns the response and what it
    took, for printing or tests."""
    start = time.perf_counter()
    processor, model = load_vlm(model_dir)
    load_s = time.perf_counter() - start
    (prompt,) = PromptBuilder(processor).from_rows([as_row(image, question)])
    start = time.perf_counter()
    ((response, new_tokens),) = generate_responses(
        model, processor, [(prompt.text, prompt.images)], do_sample=False, max_new_tokens=max_new_tokens
    )[0]
    return {
        "prompt": prompt.text,
        "prompt_tokens": len(prompt.ids),
        "image_tokens": sum(token == model.config.image_token_id for token in prompt.ids),
        "response": response,
        "new_tokens": new_tokens,
        "load_s": load_s,
        "generate_s": time.perf_counter() - start,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m saferl.generate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="checkpoint directory (default: the tiny offline model)")
    parser.add_argument("--image", type=Path, help="image file (default: a drawn scene)")
    parser.add_argument("--question", default=DEFAULT_QUESTION)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args(argv)

    tiny = args.model is None
    if tiny:
        start = time.perf_counter()
        args.model = ensure_tiny_model()
        print(f"tiny model: {args.model} (ready in {time.perf_counter() - start:.1f} s)")
    if args.image is None:
        image = demo_image()
    else:
        try:
            image = Image.open(args.image).convert("RGB")
        except (OSError, UnidentifiedImageError) as err:
            print(f"{parser.prog}: error: cannot read image {args.image}: {err}", file=sys.stderr)
            return 1
    try:
        result = generate(args.model, image, args.question, args.max_new_tokens)
    except IncompleteCheckpointError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 1
    print(f"question: {args.question}")
    print(f"prompt: {result['prompt_tokens']} tokens, {result['image_tokens']} of them image tokens")
    print(f"response ({result['new_tokens']} tokens in {result['generate_s']:.2f} s): {result['response']!r}")
    if tiny:
        print(
            "(the tiny model is randomly initialised, so its text is noise; pass --model DIR for real weights)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
