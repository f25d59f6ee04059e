"""The CPU rollout servers: Ray actors running HF `generate` behind verl's `generate` contract.

Real Ray (loopback, 2 CPUs) and the real tiny Qwen2.5-VL; the in-process model is the reference for
log probs (teacher forcing) and greedy output.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from rollout.hf_server import HFGenerationServer, parse_sampling_params
from rollout.server_manager import HFServerManager, to_wire_images
from saferl.generate import demo_image
from saferl.models.checkpoint import load_vlm

SAMPLE = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "max_tokens": 12}
GREEDY = {"temperature": 0, "max_tokens": 12}


@pytest.fixture(scope="module")
def manager(ray_cluster, tiny_model_dir: Path):
    # A generous batch window: a loaded 2-core CI box must still see concurrent requests together.
    mgr = HFServerManager.start(str(tiny_model_dir), num_servers=2, num_cpus_per_server=1, batch_wait_ms=30)
    yield mgr
    mgr.shutdown()


@pytest.fixture(scope="module")
def local(tiny_model_dir: Path):
    return load_vlm(tiny_model_dir)


def image_prompt(processor: Any, question: str, image: Any) -> list[int]:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return list(processor(text=[prompt], images=[image])["input_ids"][0])


def second_image() -> Any:
    from PIL import Image

    return Image.new("RGB", (120, 180), "green")


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def gather_generate(
    mgr: HFServerManager, requests: list[tuple[str, list[int], dict, list | None]]
) -> list:
    return await asyncio.gather(
        *[
            mgr.generate(rid, prompt_ids=ids, sampling_params=sp, image_data=imgs)
            for rid, ids, sp, imgs in requests
        ]
    )


def one(mgr: HFServerManager, request_id: str, ids: list[int], params: dict) -> Any:
    """One image request, run to completion."""
    return run(mgr.generate(request_id, prompt_ids=ids, sampling_params=params, image_data=[demo_image()]))


def teacher_forced_log_probs(
    local: Any, prompt_ids: list[int], image: Any, response: list[int], temperature: float = 1.0
) -> torch.Tensor:
    """The log probs of `response` under a plain forward pass with what the processor gives the model:
    `mm_token_type_ids` included, from which Qwen2-VL models compute their M-RoPE positions (as verl's
    trainer does). A forward pass without it uses 1-D positions: another function of the same weights."""
    processor, model = local
    feats = processor.image_processor(images=[image], return_tensors="pt")
    ids = torch.tensor([prompt_ids + response])
    types = (ids == model.config.image_token_id).long()
    with torch.no_grad():
        logits = model(
            input_ids=ids,
            mm_token_type_ids=types,
            pixel_values=feats["pixel_values"],
            image_grid_thw=feats["image_grid_thw"],
        ).logits
    n = len(prompt_ids)
    scaled = logits[0, n - 1 : -1].float() / temperature  # as verl's FSDP engine scales them
    return scaled.log_softmax(-1).gather(-1, torch.tensor(response)[:, None])[:, 0]


def total(stats: list[dict], key: str) -> float:
    return sum(s[key] for s in stats)


# ---------------------------------------------------------------------------------------------------


def test_image_prompt_returns_tokens_and_log_probs(manager: HFServerManager, local: Any) -> None:
    ids = image_prompt(local[0], "What is in the picture?", demo_image())
    out = run(manager.generate("basic", prompt_ids=ids, sampling_params=SAMPLE, image_data=[demo_image()]))
    assert 1 <= len(out.token_ids) <= 12
    assert len(out.log_probs) == len(out.token_ids)
    assert all(isinstance(t, int) for t in out.token_ids)
    assert all(lp <= 0.0 for lp in out.log_probs)
    assert out.stop_reason in ("completed", "length")


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_log_probs_match_teacher_forcing_in_a_padded_batch(
    manager: HFServerManager, local: Any, temperature: float
) -> None:
    # Different prompt lengths and images in one batch: left padding and concatenated image features.
    cases = [
        (image_prompt(local[0], "hi", demo_image()), demo_image()),
        (
            image_prompt(
                local[0], "a much longer question about what this green image shows", second_image()
            ),
            second_image(),
        ),
        (image_prompt(local[0], "and another one", demo_image()), demo_image()),
    ]
    assert len({len(ids) for ids, _ in cases}) == 3
    # the reference marks image tokens as the processor itself does
    prompt = local[0].apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}],
        tokenize=False,
        add_generation_prompt=True,
    )
    processed = local[0](text=[prompt], images=[demo_image()], return_tensors="pt")
    marked = (processed["input_ids"] == local[1].config.image_token_id).long()
    assert torch.equal(processed["mm_token_type_ids"].long(), marked)
    outs = run(
        gather_generate(
            manager,
            [
                (f"tf-{temperature}-{i}", ids, {**SAMPLE, "temperature": temperature}, [img])
                for i, (ids, img) in enumerate(cases)
            ],
        )
    )
    for (ids, img), out in zip(cases, outs, strict=True):
        expected = teacher_forced_log_probs(local, ids, img, out.token_ids, temperature)
        assert torch.allclose(torch.tensor(out.log_probs), expected, atol=1e-4), (out.log_probs, expected)


def test_greedy_is_deterministic_and_matches_in_process_generate(
    manager: HFServerManager, local: Any
) -> None:
    processor, model = local
    ids = image_prompt(processor, "Describe it.", demo_image())
    a, b = run(
        gather_generate(
            manager, [("greedy-a", ids, GREEDY, [demo_image()]), ("greedy-b", ids, GREEDY, [demo_image()])]
        )
    )
    assert a.token_ids == b.token_ids
    feats = processor.image_processor(images=[demo_image()], return_tensors="pt")
    with torch.no_grad():
        ref = model.generate(input_ids=torch.tensor([ids]), **feats, do_sample=False, max_new_tokens=12)
    assert a.token_ids == ref[0, len(ids) :].tolist()


def test_max_tokens_respected_with_length_stop_reason(manager: HFServerManager, local: Any) -> None:
    ids = image_prompt(local[0], "Say a lot.", demo_image())
    # The untrained greedy model repeats one non-eos token, so the budget is what ends it.
    out = one(manager, "len", ids, {"temperature": 0, "max_new_tokens": 5})
    assert len(out.token_ids) == 5
    assert out.stop_reason == "length"


def test_stop_token_ids_and_stop_strings_end_generation(manager: HFServerManager, local: Any) -> None:
    processor = local[0]
    ids = image_prompt(processor, "Tell me.", demo_image())
    base = {**SAMPLE, "max_tokens": 24, "seed": 7}
    full = run(manager.generate("stop-0", prompt_ids=ids, sampling_params=base, image_data=[demo_image()]))
    assert len(full.token_ids) == 24 and full.stop_reason == "length"

    stop_id = full.token_ids[5]
    cut = full.token_ids.index(stop_id) + 1
    by_id = one(manager, "stop-1", ids, {**base, "stop_token_ids": [stop_id]})
    assert by_id.token_ids == full.token_ids[:cut]
    assert by_id.stop_reason == "completed"
    assert by_id.log_probs == pytest.approx(full.log_probs[:cut], abs=1e-5)

    # A stop string made of the text of tokens 8..9: cut right after the token that completes it.
    text = processor.decode(full.token_ids[8:10])
    assert text.strip(), text
    stop_cut = next(j for j in range(1, 25) if text in processor.decode(full.token_ids[:j]))
    by_str = one(manager, "stop-2", ids, {**base, "stop": [text]})
    assert by_str.token_ids == full.token_ids[:stop_cut]
    assert by_str.stop_reason == "completed"


def test_model_eos_ids_are_stop_tokens(tiny_model_dir: Path, local: Any) -> None:
    """In-process, no Ray: the class stands alone. eos ids from generation_config end a response."""
    server = HFGenerationServer(str(tiny_model_dir))
    eos = set(local[1].generation_config.eos_token_id)
    assert eos <= set(server.eos_ids)
    config = local[1].config
    # Never sampled: the vision placeholders and their start/end markers (a stray marker breaks mRoPE).
    vision = (
        config.image_token_id,
        config.video_token_id,
        config.vision_start_token_id,
        config.vision_end_token_id,
    )
    assert server.placeholder_ids == sorted(set(vision))
    ids = image_prompt(local[0], "Tell me.", demo_image())
    params = {**SAMPLE, "max_tokens": 24, "seed": 7}
    full = run(server.generate(ids, params, [demo_image()]))
    server.eos_ids = sorted(eos | {full.token_ids[3]})  # pretend that token were an eos id
    out = run(server.generate(ids, params, [demo_image()]))
    assert out.token_ids == full.token_ids[: full.token_ids.index(full.token_ids[3]) + 1]
    assert out.stop_reason == "completed"


def test_seed_reproducible_across_calls_servers_and_batches(manager: HFServerManager, local: Any) -> None:
    ids = image_prompt(local[0], "Go.", demo_image())
    seeded = {**SAMPLE, "seed": 123}
    # Same seed: alone, then inside a batch with unseeded requests, possibly on the other server.
    alone = run(manager.generate("seed-a", prompt_ids=ids, sampling_params=seeded, image_data=[demo_image()]))
    batch = [("seed-b", ids, seeded, [demo_image()])] + [
        (f"noise-{i}", ids, SAMPLE, [demo_image()]) for i in range(3)
    ]
    in_batch = run(gather_generate(manager, batch))[0]
    assert in_batch.token_ids == alone.token_ids
    other = one(manager, "seed-c", ids, {**SAMPLE, "seed": 124})
    assert other.token_ids != alone.token_ids


def test_concurrent_requests_are_batched(manager: HFServerManager, local: Any) -> None:
    ids = image_prompt(local[0], "Batch me.", demo_image())
    before = manager.stats()
    outs = run(gather_generate(manager, [(f"batch-{i}", ids, SAMPLE, [demo_image()]) for i in range(8)]))
    after = manager.stats()
    assert len(outs) == 8
    requests = total(after, "requests") - total(before, "requests")
    batches = total(after, "batches") - total(before, "batches")
    assert requests == 8
    assert batches < requests, after
    assert all(s["requests"] > b["requests"] for s, b in zip(after, before, strict=True))  # both servers used


def test_request_id_affinity_and_least_loaded(manager: HFServerManager, local: Any) -> None:
    ids = image_prompt(local[0], "Turn one.", demo_image())
    first = run(
        gather_generate(
            manager, [("traj-A", ids, GREEDY, [demo_image()]), ("traj-B", ids, GREEDY, [demo_image()])]
        )
    )
    assert len(first) == 2
    a, b = manager.server_of("traj-A"), manager.server_of("traj-B")
    assert {a, b} == {0, 1}  # two new ids at once spread over both servers
    before = manager.stats()
    # Turn two of trajectory A, sent together with more new ids: A stays on its server.
    turn2 = [("traj-A", ids, GREEDY, [demo_image()])] + [
        (f"new-{i}", ids, GREEDY, [demo_image()]) for i in range(3)
    ]
    run(gather_generate(manager, turn2))
    after = manager.stats()
    assert manager.server_of("traj-A") == a
    assert after[a]["requests"] - before[a]["requests"] >= 1
    assert manager.server_of("new-0") != a  # A was in flight on `a`, so the next new id went elsewhere


def test_affinity_map_is_an_lru() -> None:
    mgr = HFServerManager([object(), object()], affinity_capacity=2)
    assert mgr._route("x") == 0
    mgr.in_flight[0] = 1
    assert mgr._route("y") == 1
    assert mgr._route("x") == 0  # refreshes x
    mgr._route("z")  # evicts y, the least recently used
    assert mgr.server_of("y") is None and mgr.server_of("x") == 0


def test_unsupported_requests_raise_clear_errors(manager: HFServerManager, local: Any) -> None:
    ids = image_prompt(local[0], "No.", demo_image())
    with pytest.raises(ValueError, match="n=4 is not supported"):
        run(
            manager.generate(
                "err", prompt_ids=ids, sampling_params={**SAMPLE, "n": 4}, image_data=[demo_image()]
            )
        )
    with pytest.raises(ValueError, match="n=2 is not supported"):
        parse_sampling_params({"n": 2}, 16)
    with pytest.raises(ValueError, match="video_data"):
        run(manager.generate("err", prompt_ids=ids, sampling_params=SAMPLE, video_data=[object()]))
    # A prompt whose image tokens do not fit the images fails alone, with a message saying so.
    with pytest.raises(ValueError, match="image tokens"):
        run(manager.generate("err", prompt_ids=ids, sampling_params=SAMPLE, image_data=None))


def test_ray_actors_use_their_own_process(manager: HFServerManager) -> None:
    stats = manager.stats()
    assert len({s["pid"] for s in stats}) == 2 and os.getpid() not in {s["pid"] for s in stats}
    assert all(s["torch_threads"] == 1 for s in stats)


def test_wire_images_give_identical_features(local: Any) -> None:
    """The manager sends RGB images as arrays; the server must see exactly what a PIL image gives."""
    processor = local[0]
    images = [demo_image(), second_image()]
    wire = to_wire_images(images)
    assert all(isinstance(w, np.ndarray) for w in wire)
    a = processor.image_processor(images=images, return_tensors="pt")
    b = processor.image_processor(images=wire, return_tensors="pt", input_data_format="channels_last")
    assert torch.equal(a["pixel_values"], b["pixel_values"])
    assert torch.equal(a["image_grid_thw"], b["image_grid_thw"])
