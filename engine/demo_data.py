"""The demo dataset: short letter puzzles a tiny random-init model learns in minutes.

Each record is one chat turn in mlx-lm's format. The user names an operation and
gives a few lowercase letters separated by spaces (so each letter is one token);
the assistant answers with the transformed letters:

    {"messages": [{"role": "user", "content": "reverse: k a t e"},
                  {"role": "assistant", "content": "e t a k"}]}

The output is byte-identical on every run: one `random.Random(seed)` draws
everything, and no prompt appears in more than one split.

    python -m engine.demo_data [OUT_DIR]     # default presets/data/demo
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

DEFAULT_OUT_DIR = Path(__file__).resolve().parent.parent / "presets" / "data" / "demo"
SPLIT_SIZES = {"train": 1500, "valid": 100, "test": 100}
LETTERS = "abcdefghijklmnopqrstuvwxyz"
MIN_LETTERS, MAX_LETTERS = 3, 6


def _reverse(letters: list[str]) -> list[str]:
    return letters[::-1]


def _uppercase(letters: list[str]) -> list[str]:
    return [c.upper() for c in letters]


OPERATIONS = {"reverse": _reverse, "uppercase": _uppercase}


def make_record(operation: str, letters: list[str]) -> dict:
    """One chat record: the prompt names the operation, the answer applies it."""
    answer = OPERATIONS[operation](letters)
    return {
        "messages": [
            {"role": "user", "content": f"{operation}: {' '.join(letters)}"},
            {"role": "assistant", "content": " ".join(answer)},
        ]
    }


def generate(seed: int = 0, sizes: dict[str, int] = SPLIT_SIZES) -> dict[str, list[dict]]:
    """Return {split: records}; distinct prompts across all splits, fixed by `seed`."""
    rng = random.Random(seed)
    operations = sorted(OPERATIONS)
    seen: set[str] = set()
    splits: dict[str, list[dict]] = {}
    for split, size in sizes.items():
        records = []
        while len(records) < size:
            operation = rng.choice(operations)
            letters = rng.choices(LETTERS, k=rng.randint(MIN_LETTERS, MAX_LETTERS))
            record = make_record(operation, letters)
            prompt = record["messages"][0]["content"]
            if prompt not in seen:
                seen.add(prompt)
                records.append(record)
        splits[split] = records
    return splits


def to_jsonl(records: list[dict]) -> str:
    """Serialise records one JSON object per line, with a stable key order."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def write(out_dir: Path | str = DEFAULT_OUT_DIR, seed: int = 0) -> list[Path]:
    """Write train/valid/test.jsonl into `out_dir`; return the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for split, records in generate(seed).items():
        path = out_dir / f"{split}.jsonl"
        path.write_text(to_jsonl(records), encoding="utf-8", newline="\n")
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out_dir = Path(argv[0]) if argv else DEFAULT_OUT_DIR
    for path in write(out_dir):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
