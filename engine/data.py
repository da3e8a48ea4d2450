"""Training data: read and check JSONL files, then tokenize them.

A data directory holds train.jsonl (required) and optionally valid.jsonl and
test.jsonl: one JSON record per line, in one of mlx-lm's formats (chat,
prompt/completion, text; see docs/data-formats.md). Every line is checked
before anything trains and each problem names its file and line. Tokenizing
reuses mlx-lm's dataset classes. Batching is in engine/batches.py.
mlx-lm is imported only inside `load_splits` (it pulls in transformers).
"""

from __future__ import annotations

import difflib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

SPLIT_NAMES = ("train", "valid", "test")
FORMAT_KEYS = {"chat": ("messages",), "completions": ("prompt", "completion"), "text": ("text",)}
FORMAT_LABELS = {"chat": "chat (messages)", "completions": "prompt/completion", "text": "text"}
KNOWN_KEYS = ("messages", "prompt", "completion", "text", "tools")
ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_LISTED = 20  # problems a DataError lists before "and N more"

Log = Callable[[str, str], None]  # log(level, text), level "info" or "warning"
Example = tuple[np.ndarray, int]  # (int32 tokens, offset: how many leading tokens are prompt)
Problem = tuple[str, int, str]  # (file name, line or 0 for the whole file, what is wrong)


class DataError(ValueError):
    """Training data that cannot be used as it is; the CLI exits with code 2."""


@dataclass
class Split:
    """One tokenized file. examples[i] came from line lines[i] of path."""

    name: str
    path: Path
    format: str  # "chat", "completions" or "text"
    examples: list[Example]
    lines: list[int]


# -- reading and checking ------------------------------------------------------


class _DuplicateKey(Exception):
    pass


def _no_duplicates(pairs):
    keys = [key for key, _ in pairs]
    if len(set(keys)) < len(keys):
        raise _DuplicateKey(next(key for key in keys if keys.count(key) > 1))
    return dict(pairs)


def _kind(value) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return {dict: "an object", list: "an array", str: "a string"}.get(type(value), "a number")


def _typo_hint(keys, known=KNOWN_KEYS) -> str:
    for key in keys:
        close = difflib.get_close_matches(str(key), [k for k in known if k not in keys], n=1, cutoff=0.6)
        if close:
            return f" ('{key}' looks like a typo of '{close[0]}')"
    return ""


def _parse_line(raw: bytes) -> tuple[dict | None, str | None]:
    """One line -> (record, None) or (None, what is wrong)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, f"not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1})"
    if not text.strip():
        return None, "blank line (every line must hold one JSON record)"
    try:
        record = json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as e:
        return None, f"invalid JSON: {e.msg} (column {e.colno})"
    except _DuplicateKey as e:
        return None, f"key '{e}' appears twice"
    if not isinstance(record, dict):
        return None, f"the record is {_kind(record)}, not a JSON object {{...}}"
    return record, None


def _classify(record: dict) -> tuple[str | None, str | None]:
    """Which format a record's keys say -> (format, None) or (None, what is wrong)."""
    present = [f for f, keys in FORMAT_KEYS.items() if any(k in record for k in keys)]
    if len(present) > 1:
        keys = ", ".join(k for f in present for k in FORMAT_KEYS[f] if k in record)
        return None, f"has keys of more than one format ({keys}); use messages, or prompt + completion, or text"
    if not present:
        found = ", ".join(map(repr, record)) or "none"
        return None, f"no 'messages', 'prompt'/'completion' or 'text' key (keys: {found}){_typo_hint(list(record))}"
    missing = [k for k in FORMAT_KEYS[present[0]] if k not in record]
    if missing:
        other = next(k for k in FORMAT_KEYS[present[0]] if k in record)
        return None, f"has '{other}' but no '{missing[0]}'{_typo_hint(list(record))}"
    return present[0], None


def _check_string(value, what: str) -> str | None:
    if not isinstance(value, str):
        return f"{what} must be a string, got {_kind(value)}"
    if not value.strip():
        return f"{what} is empty"
    return None


def _check_message(m, i: int) -> str | None:
    if not isinstance(m, dict):
        return f"message {i} is {_kind(m)}, not an object"
    if "role" not in m:
        return f"message {i} has no 'role'{_typo_hint(list(m), ('role', 'content'))}"
    if m["role"] not in ROLES:
        close = difflib.get_close_matches(str(m["role"]), ROLES, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"message {i} has unknown role {m['role']!r}{hint}; roles are {', '.join(ROLES)}"
    if m["role"] == "assistant" and m.get("tool_calls") and not m.get("content"):
        return None  # a tool-calling turn may have no text
    if "content" not in m:
        return f"message {i} has no 'content'{_typo_hint(list(m), ('role', 'content'))}"
    return _check_string(m["content"], f"message {i} 'content'")


def _check_fields(record: dict, fmt: str) -> str | None:
    """What is wrong with the values of a record whose keys match fmt, or None."""
    tools = record.get("tools")
    if fmt != "text" and tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
        return "'tools' must be an array of objects"
    if fmt == "text":
        return _check_string(record["text"], "'text'")
    if fmt == "completions":
        return _check_string(record["prompt"], "'prompt'") or _check_string(record["completion"], "'completion'")
    messages = record["messages"]
    if not isinstance(messages, list):
        return f"'messages' must be an array, got {_kind(messages)}"
    if not messages:
        return "'messages' is empty"
    return next(filter(None, (_check_message(m, i) for i, m in enumerate(messages, 1))), None)


def _scan(path: Path) -> tuple[list[tuple[int, dict]], str | None, list[Problem]]:
    """Read and check one file -> (good (line, record) pairs, the file's format, problems).

    The format is the one most records' keys match (the first seen wins a tie);
    records of another format are problems, not silently misread.
    """
    name = path.name
    try:
        raw = path.read_bytes()
    except OSError as e:
        return [], None, [(name, 0, f"cannot read the file: {e.strerror}")]
    if not raw.strip():
        return [], None, [(name, 0, "the file is empty")]
    lines = raw.split(b"\n")
    if lines[-1] == b"":
        lines.pop()  # the newline that ends the last line
    lines[0] = lines[0].removeprefix(b"\xef\xbb\xbf")  # a byte-order mark some editors write
    problems: list[Problem] = []
    typed: list[tuple[int, dict, str]] = []
    for number, line in enumerate(lines, 1):
        record, problem = _parse_line(line.removesuffix(b"\r"))
        fmt, problem = _classify(record) if record is not None else (None, problem)
        if problem:
            problems.append((name, number, problem))
        else:
            typed.append((number, record, fmt))
    if not typed:
        return [], None, problems
    file_format, votes = Counter(fmt for _, _, fmt in typed).most_common(1)[0]
    good = []
    for number, record, fmt in typed:
        problem = _check_fields(record, fmt) if fmt == file_format else (
            f"a {FORMAT_LABELS[fmt]} record, but this file holds {FORMAT_LABELS[file_format]} records "
            f"({votes} of {len(lines)} lines); use one format per file"
        )
        if problem:
            problems.append((name, number, problem))
        else:
            good.append((number, record))
    return good, file_format, sorted(problems, key=lambda p: p[1])


def _report(source: Path, problems: list[Problem], skip_invalid: bool, log: Log) -> None:
    """Raise a DataError listing the problems, or (skip_invalid) log what is skipped.

    Whole-file problems (line 0) always raise: skipping records cannot fix them.
    """
    fatal = [p for p in problems if p[1] == 0]
    if fatal or (problems and not skip_invalid):
        shown = fatal if skip_invalid else problems
        listed = [f"  {p[0]}:{p[1]}: {p[2]}" if p[1] else f"  {p[0]}: {p[2]}" for p in shown[:MAX_LISTED]]
        if len(shown) > MAX_LISTED:
            listed.append(f"  and {len(shown) - MAX_LISTED} more")
        head = f"{len(shown)} problem{'s' if len(shown) > 1 else ''} in the data in {source}:"
        tail = [] if fatal else ["Fix these lines, or set data.skip_invalid=true to skip bad records."]
        raise DataError("\n".join([head, *listed, *tail]))
    for name in dict.fromkeys(p[0] for p in problems):
        mine = [p for p in problems if p[0] == name]
        first = "; ".join(f"line {p[1]}: {p[2]}" for p in mine[:3])
        more = f"; and {len(mine) - 3} more" if len(mine) > 3 else ""
        log("warning", f"{name}: skipped {len(mine)} bad line{'s' if len(mine) > 1 else ''} ({first}{more})")


def load_records(path: Path, *, skip_invalid: bool = False, log: Log | None = None) -> tuple[list[dict], str]:
    """Read one JSONL file -> (its good records, its format: "chat", "completions" or "text").

    Bad lines raise a DataError listing them as file:line, or with skip_invalid
    are left out and reported through log("warning", ...).
    """
    good, fmt, problems = _scan(Path(path))
    if not good and not any(p[1] == 0 for p in problems):
        problems.append((Path(path).name, 0, "no usable records (every line has a problem)"))
    _report(Path(path), problems, skip_invalid, log or (lambda level, text: None))
    return [record for _, record in good], fmt


# -- tokenizing ----------------------------------------------------------------


def _tokenize(name, good, fmt, tokenizer, mask_prompt, max_seq_length, log) -> tuple[list, list, list[Problem]]:
    """Tokenize with mlx-lm's dataset classes; truncate; drop examples with no target token."""
    from mlx_lm.tuner import datasets

    records = [record for _, record in good]
    if fmt == "chat":
        dataset = datasets.ChatDataset(records, tokenizer, mask_prompt=mask_prompt)
    elif fmt == "completions":
        dataset = datasets.CompletionsDataset(records, tokenizer, "prompt", "completion", mask_prompt)
    else:
        dataset = datasets.TextDataset(records, tokenizer)
    examples, lines, problems, truncated, dropped = [], [], [], 0, []
    for number, record in good:
        if mask_prompt and fmt == "chat" and len(record["messages"]) < 2:
            problems.append((name, number, "train.mask_prompt is on, but a chat of one message has no prompt"))
            continue
        try:
            tokens, offset = dataset.process(record)
        except Exception as e:  # a chat template may raise on anything it dislikes
            problems.append((name, number, f"could not tokenize: {type(e).__name__}: {e}"))
            continue
        if len(tokens) > max_seq_length:
            truncated += 1
            tokens = tokens[:max_seq_length]
        if len(tokens) - max(offset, 1) <= 0:  # no j with offset <= j + 1 < length: see target_mask
            dropped.append(number)
            continue
        examples.append((np.asarray(tokens, dtype=np.int32), int(offset)))
        lines.append(number)
    if truncated:
        log("warning", f"{name}: {truncated} of {len(good)} records truncated to {max_seq_length} tokens")
    if dropped:
        shown = ", ".join(map(str, dropped[:5])) + (", ..." if len(dropped) > 5 else "")
        log("warning", f"{name}: dropped {len(dropped)} of {len(good)} records with nothing left to train on "
            f"after prompt masking and truncation to {max_seq_length} tokens (lines {shown})")
    return examples, lines, problems


def load_splits(
    data_dir: Path | str,
    tokenizer,
    *,
    mask_prompt: bool = False,
    max_seq_length: int = 2048,
    skip_invalid: bool = False,
    log: Log | None = None,
    batch_size: int = 1,
) -> dict[str, Split]:
    """Check, tokenize and truncate train.jsonl (+ valid.jsonl, test.jsonl if present).

    Returns {"train": Split, ...} for the files that exist. Every problem in
    every file is gathered first and raised as one DataError; with skip_invalid
    bad records are skipped and logged instead. Raises DataError too when the
    train split has fewer than batch_size usable examples, or a split has none.
    """
    log = log or (lambda level, text: None)
    data_dir = Path(data_dir)
    if not data_dir.exists():
        raise DataError(f"data directory not found: {data_dir}")
    if not data_dir.is_dir():
        raise DataError(f"data must be a directory holding train.jsonl; {data_dir} is a file")
    present = sorted(p.name for p in data_dir.iterdir() if p.suffix in (".jsonl", ".json") or "train" in p.name)
    if not (data_dir / "train.jsonl").is_file():
        found = f"; found: {', '.join(present)}" if present else "; the directory has no .jsonl files"
        raise DataError(f"{data_dir}: train.jsonl not found (training data is required){found}")
    expected = [f"{n}.jsonl" for n in SPLIT_NAMES]
    for other in (p for p in present if p not in expected):
        close = difflib.get_close_matches(other, expected, n=1, cutoff=0.5)
        hint = f" (to use it, rename it to {close[0]})" if close else ""
        log("warning", f"{other}: ignored; only {', '.join(expected)} are read{hint}")

    scans = {n: _scan(data_dir / f"{n}.jsonl") for n in SPLIT_NAMES if (data_dir / f"{n}.jsonl").is_file()}
    problems = [p for _, _, file_problems in scans.values() for p in file_problems]
    for n, (good, fmt, _) in scans.items():
        if not good and not any(p[0] == f"{n}.jsonl" and p[1] == 0 for p in problems):
            problems.append((f"{n}.jsonl", 0, "no usable records (every line has a problem)"))
        if mask_prompt and fmt == "text":
            problems.append((f"{n}.jsonl", 0, "train.mask_prompt is on, but text records have no prompt to mask; "
                             "use prompt/completion or chat records, or set train.mask_prompt=false"))
    _report(data_dir, problems, skip_invalid, log)

    splits, token_problems = {}, []
    for n, (good, fmt, _) in scans.items():
        examples, lines, bad = _tokenize(f"{n}.jsonl", good, fmt, tokenizer, mask_prompt, max_seq_length, log)
        token_problems += bad
        splits[n] = Split(n, data_dir / f"{n}.jsonl", fmt, examples, lines)
    _report(data_dir, token_problems, skip_invalid, log)
    if "valid" not in splits:
        log("info", "no valid.jsonl: training without validation")
    for n, split in splits.items():
        if not split.examples:
            raise DataError(f"{n}.jsonl: no usable records left after skipping and dropping (see the warnings above)")
    if (count := len(splits["train"].examples)) < batch_size:
        raise DataError(f"train.jsonl: {count} usable record{'' if count == 1 else 's'}, fewer than "
                        f"train.batch_size={batch_size}; add records or lower train.batch_size")
    return splits
