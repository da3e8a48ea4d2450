"""The demo dataset: a tiny chat bot that a random-init model learns in minutes.

Each record is one chat turn in mlx-lm's format. The user says something with one
of ten intents (a greeting, a feeling, a question about the time, ...) in many
phrasings; the assistant gives that intent's fixed reply:

    {"messages": [{"role": "user", "content": "Well, I am feeling lonely today."},
                  {"role": "assistant", "content": "I am sorry to hear that. Take care of yourself."}]}

A model has to find the few words that carry the intent among the filler, which
LoRA adapters on `builtin:tiny` learn within a few hundred steps; the replies are
fixed, so the loss can fall close to zero and greedy answers become exactly right.

The output is byte-identical on every run: one `random.Random(seed)` draws
everything, and no prompt appears twice in the dataset.

    python -m engine.demo_data [OUT_DIR]     # default presets/data/demo
"""

from __future__ import annotations

import itertools
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path

DEFAULT_OUT_DIR = Path(__file__).resolve().parent.parent / "presets" / "data" / "demo"
# Records per intent and split; ten intents give 1500 / 100 / 100 records.
PER_INTENT = {"train": 150, "valid": 10, "test": 10}

OPENERS = ("", "So, ", "Well, ", "Okay, ", "Um, ", "Honestly, ")
STATEMENT_ENDS = (".", "!", "...")
QUESTION_ENDS = ("?", "? Please tell me.", "?!")
HAPPY = ("happy", "great", "glad", "cheerful", "excited", "calm", "proud", "relaxed", "lucky", "fantastic")
SAD = ("sad", "tired", "lonely", "upset", "worried", "angry", "bored", "stressed", "awful", "gloomy")
FEELING_TEMPLATES = ("I feel {x}", "I am {x}", "I am feeling {x}", "I feel so {x}", "I am really {x}")
WHEN = ("", " today", " this morning", " after work", " right now", " this week")
CITIES = ("Paris", "London", "Tokyo", "Berlin", "Madrid", "Rome", "Oslo", "Lima", "Cairo", "Sydney")


@dataclass(frozen=True)
class Intent:
    """Phrasings of one intent and the assistant's fixed reply to them."""

    name: str
    templates: tuple[str, ...]  # "{x}" takes each of `slot`; then come a `when` and an end
    reply: str
    ends: tuple[str, ...] = STATEMENT_ENDS
    slot: tuple[str, ...] = ("",)
    when: tuple[str, ...] = ("",)

    def prompts(self) -> list[str]:
        """Every phrasing, in a fixed order."""
        out = []
        for opener, template, x, when, end in itertools.product(
            OPENERS, self.templates, self.slot, self.when, self.ends
        ):
            text = template.format(x=x) + when + end
            if opener and not text.startswith("I "):  # "So, what time is it?" but "So, I am glad."
                text = text[0].lower() + text[1:]
            out.append(opener + text)
        return out


INTENTS = (
    Intent(
        "greeting",
        ("Hello", "Hi there", "Good morning", "Good evening", "Hey, nice to meet you", "Greetings"),
        "Hello! How can I help you today?",
        when=("", " friend", " bot"),
    ),
    Intent("happy", FEELING_TEMPLATES, "That is wonderful to hear! Keep it up.", slot=HAPPY, when=WHEN),
    Intent("sad", FEELING_TEMPLATES, "I am sorry to hear that. Take care of yourself.", slot=SAD, when=WHEN),
    Intent(
        "name",
        ("What is your name", "Who are you", "What should I call you", "Do you have a name"),
        "My name is Tiny. I am a very small model.",
        ends=QUESTION_ENDS,
        when=("", " by the way", " again", " exactly"),
    ),
    Intent(
        "time",
        ("What time is it", "Do you know the time", "Can you tell me the time", "How late is it"),
        "I cannot see a clock, sorry.",
        ends=QUESTION_ENDS,
        when=("", " now", " right now", " here"),
    ),
    Intent(
        "weather",
        ("Will it rain in {x}", "How is the weather in {x}", "Is it sunny in {x}", "Is it cold in {x}"),
        "I cannot check the weather from here.",
        ends=QUESTION_ENDS,
        slot=CITIES,
        when=("", " today", " tomorrow"),
    ),
    Intent(
        "thanks",
        ("Thank you", "Thanks a lot", "Thanks for your help", "Many thanks", "I really appreciate it"),
        "You are welcome! Happy to help.",
        when=("", " so much", " again", " friend"),
    ),
    Intent(
        "goodbye",
        ("Goodbye", "See you later", "Bye for now", "I have to go", "Talk to you tomorrow"),
        "Goodbye! Have a nice day.",
        when=("", " friend", " then", " everyone"),
    ),
    Intent(
        "joke",
        ("Tell me a joke", "Say something funny", "Make me laugh", "Do you know any jokes"),
        "Why did the robot go on holiday? It needed to recharge.",
        ends=QUESTION_ENDS,
        when=("", " please", " now", " again"),
    ),
    Intent(
        "abilities",
        ("What can you do", "How can you help me", "What are you good at", "What do you know"),
        "I can answer a few simple questions.",
        ends=QUESTION_ENDS,
        when=("", " exactly", " for me", " today"),
    ),
)


def make_record(prompt: str, reply: str) -> dict:
    """One chat record in mlx-lm's {"messages": [...]} format."""
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]}


def generate(seed: int = 0, per_intent: dict[str, int] = PER_INTENT) -> dict[str, list[dict]]:
    """Return {split: records}: each intent's phrasings drawn without replacement, splits shuffled."""
    rng = random.Random(seed)
    needed = sum(per_intent.values())
    splits: dict[str, list[dict]] = {split: [] for split in per_intent}
    for intent in INTENTS:
        prompts = intent.prompts()
        if len(prompts) < needed:
            raise ValueError(f"intent {intent.name!r} has {len(prompts)} phrasings, needs {needed}")
        chosen = iter(rng.sample(prompts, needed))
        for split, count in per_intent.items():
            splits[split].extend(make_record(next(chosen), intent.reply) for _ in range(count))
    for records in splits.values():
        rng.shuffle(records)
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
