"""The demo dataset: reproducible to the byte, well-formed, and with no prompt in two splits."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine import demo_data

REPO_ROOT = Path(demo_data.__file__).resolve().parent.parent

SPLITS = ("train", "valid", "test")


def read(directory, split):
    return [json.loads(line) for line in (directory / f"{split}.jsonl").read_text().splitlines()]


def test_regenerating_gives_the_shipped_files_byte_for_byte(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "engine.demo_data", str(tmp_path)], capture_output=True, text=True, check=True, cwd=REPO_ROOT
    )
    assert result.stdout.splitlines() == [str(tmp_path / f"{s}.jsonl") for s in SPLITS]
    for split in SPLITS:
        assert (tmp_path / f"{split}.jsonl").read_bytes() == (demo_data.DEFAULT_OUT_DIR / f"{split}.jsonl").read_bytes()


def test_another_seed_gives_other_data_of_the_same_shape(tmp_path):
    demo_data.write(tmp_path, seed=1)
    for split in SPLITS:
        other = read(tmp_path, split)
        shipped = read(demo_data.DEFAULT_OUT_DIR, split)
        assert len(other) == len(shipped) and other != shipped


def test_splits_have_the_documented_sizes_and_balanced_intents():
    data = demo_data.generate()
    assert {s: len(r) for s, r in data.items()} == {"train": 1500, "valid": 100, "test": 100}
    replies = {intent.reply for intent in demo_data.INTENTS}
    for split, records in data.items():
        counts = {}
        for record in records:
            reply = record["messages"][1]["content"]
            counts[reply] = counts.get(reply, 0) + 1
        assert counts == {r: demo_data.PER_INTENT[split] for r in replies}


def test_records_are_one_user_and_one_assistant_message():
    for records in demo_data.generate().values():
        for record in records:
            assert list(record) == ["messages"]
            user, assistant = record["messages"]
            assert (user["role"], assistant["role"]) == ("user", "assistant")
            assert user["content"].strip() and assistant["content"].strip()
            assert len(user["content"]) + len(assistant["content"]) < 120  # short: < 64 tokens


def test_no_prompt_appears_twice_across_splits():
    prompts = [r["messages"][0]["content"] for records in demo_data.generate().values() for r in records]
    assert len(prompts) == len(set(prompts))


def test_an_intent_with_too_few_phrasings_is_refused():
    with pytest.raises(ValueError, match="intent 'greeting' has 324 phrasings, needs 1000"):
        demo_data.generate(per_intent={"train": 1000})
