"""The QI-Safe-10K row schema: one row per sample, stored as parquet.

Every stage (source adapters, the shipped sample, the validator, curation, the verl converter) writes or
reads rows of this shape, so it is defined once here. See `data/QI-Safe-10K/README.md` for the data card.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

LABELS = ("safe", "unsafe")
SPLITS = ("train", "val", "warm_start")  # warm_start: rows for a supervised stage before RL (PST)

# An object the image shows: its name, its attributes (colour, size, position) and, for typographic
# images, the text it carries. The rule judge checks a response's claims about the image against these.
IMAGE_OBJECT = pa.struct(
    [
        pa.field("name", pa.string()),
        pa.field("attributes", pa.list_(pa.string())),
        pa.field("text", pa.string()),
    ]
)

ARROW_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("image", pa.binary(), nullable=False),  # encoded bytes (PNG or JPEG), not a path
        pa.field("question", pa.string(), nullable=False),
        pa.field("safety_label", pa.string(), nullable=False),  # one of LABELS
        pa.field("category", pa.string(), nullable=False),  # a policy category id (data/policies)
        pa.field("source", pa.string(), nullable=False),  # e.g. "beavertails_v", "synthetic"
        pa.field("split", pa.string(), nullable=False),  # one of SPLITS
        pa.field("reference", pa.string()),  # optional: a good answer, `<think>…</think>` then the answer
        pa.field("image_objects", pa.list_(IMAGE_OBJECT)),  # optional: what the image shows, when known
    ]
)
COLUMNS = tuple(ARROW_SCHEMA.names)
REQUIRED_COLUMNS = ("id", "image", "question", "safety_label", "category", "source", "split")
OPTIONAL_COLUMNS = tuple(c for c in COLUMNS if c not in REQUIRED_COLUMNS)


def image_object(name: str, attributes: list[str] | tuple[str, ...] = (), text: str | None = None) -> dict:
    return {"name": name, "attributes": list(attributes), "text": text}


def rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows (dicts with at least the required columns) to a table with exactly ARROW_SCHEMA."""
    columns = {name: [row.get(name) for row in rows] for name in COLUMNS}
    return pa.Table.from_pydict(columns, schema=ARROW_SCHEMA)


def image_bytes(value: Any) -> bytes | None:
    """The encoded image an `image` cell holds: raw bytes, or the `bytes` of a Hugging Face `datasets`
    Image struct `{bytes, path}` (what `datasets` writes to parquet). None for anything else, which the
    validator names (`saferl.data.validate.image_problem`)."""
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, dict) and isinstance(value.get("bytes"), bytes | bytearray):
        return bytes(value["bytes"])
    return None
