"""engine/data.py: every bad-input message, tokenizing, truncation, batching and resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine import batches
from engine.batches import BatchStream, epoch_batches, eval_batches, make_batch
from engine.data import DataError, load_records, load_splits

ROLE_IDS = {"system": 5, "developer": 6, "user": 7, "assistant": 8, "tool": 9}
BOS, EOS, TURN = 2, 1, 3


class FakeTokenizer:
    """One token per character; a chat turn is TURN, role, content..., EOS after a BOS."""

    eos_token_id = EOS

    def encode(self, text, add_special_tokens=True):
        return [10 + ord(c) % 90 for c in text]

    def apply_chat_template(self, messages, tools=None, add_generation_prompt=False, return_dict=False, **kw):
        out = [BOS]
        for m in messages:
            if m.get("content") == "EXPLODE":
                raise ValueError("the template refuses this")
            out += [TURN, ROLE_IDS[m["role"]], *self.encode(m.get("content") or ""), EOS]
        if add_generation_prompt:
            out += [TURN, ROLE_IDS["assistant"]]
        return out


TOK = FakeTokenizer()


def chat(user="hi", assistant="hello"):
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


def write(folder: Path, name: str, lines, end="\n") -> Path:
    """Write records (dicts become JSON, str/bytes are written as they are) one per line."""
    folder.mkdir(parents=True, exist_ok=True)
    parts = [json.dumps(x).encode() if isinstance(x, dict) else x if isinstance(x, bytes) else x.encode() for x in lines]
    path = folder / name
    path.write_bytes(b"\n".join(parts) + end.encode())
    return path


def load(folder, **kw):
    kw.setdefault("max_seq_length", 512)
    return load_splits(folder, TOK, **kw)


def error(folder, **kw) -> str:
    with pytest.raises(DataError) as info:
        load(folder, **kw)
    return str(info.value)


def one_bad_line(tmp_path, line, good=None) -> str:
    """The error for a train.jsonl with a good record, then `line`, then a good record."""
    good = good or chat()
    write(tmp_path, "train.jsonl", [good, line, good])
    return error(tmp_path)


# -- directories and files ------------------------------------------------------


def test_missing_data_dir(tmp_path):
    assert error(tmp_path / "nope") == f"data directory not found: {tmp_path / 'nope'}"


def test_data_path_is_a_file(tmp_path):
    path = write(tmp_path, "train.jsonl", [chat()])
    assert error(path) == f"data must be a directory holding train.jsonl; {path} is a file"


def test_missing_train_names_the_files_found(tmp_path):
    write(tmp_path, "train.json", [chat()])
    write(tmp_path, "valid.jsonl", [chat()])
    message = error(tmp_path)
    assert message == f"{tmp_path}: train.jsonl not found (training data is required); found: train.json, valid.jsonl"


def test_empty_train_file(tmp_path):
    (tmp_path / "train.jsonl").write_bytes(b"")
    assert error(tmp_path) == f"1 problem in the data in {tmp_path}:\n  train.jsonl: the file is empty"


def test_whitespace_only_file_is_empty_and_skip_invalid_does_not_hide_it(tmp_path):
    write(tmp_path, "train.jsonl", [chat(), chat()])
    (tmp_path / "valid.jsonl").write_text("\n  \n")
    message = error(tmp_path, skip_invalid=True)
    assert "valid.jsonl: the file is empty" in message
    assert "skip_invalid" not in message  # skipping cannot fix a whole-file problem


def test_misnamed_split_file_is_reported(tmp_path):
    write(tmp_path, "train.jsonl", [chat()])
    write(tmp_path, "validation.jsonl", [chat()])
    logs = []
    load(tmp_path, log=lambda level, text: logs.append((level, text)))
    assert ("warning", "validation.jsonl: ignored; only train.jsonl, valid.jsonl, test.jsonl are read "
            "(to use it, rename it to valid.jsonl)") in logs
    assert ("info", "no valid.jsonl: training without validation") in logs


# -- bad lines: each message names the file, the line and what is wrong ------------


def test_invalid_json_names_line_and_json_error(tmp_path):
    message = one_bad_line(tmp_path, '{"messages": [}')
    assert "  train.jsonl:2: invalid JSON: Expecting value (column 15)" in message.splitlines()
    assert message.endswith("Fix these lines, or set data.skip_invalid=true to skip bad records.")


def test_blank_and_whitespace_lines_inside_the_file(tmp_path):
    write(tmp_path, "train.jsonl", [chat(), "", chat(), "   \t", chat()])
    lines = error(tmp_path).splitlines()
    assert lines[1:3] == [
        "  train.jsonl:2: blank line (every line must hold one JSON record)",
        "  train.jsonl:4: blank line (every line must hold one JSON record)",
    ]


def test_trailing_blank_line_is_an_error_but_a_final_newline_is_not(tmp_path):
    write(tmp_path, "train.jsonl", [chat(), chat()], end="\n\n")
    assert "train.jsonl:3: blank line" in error(tmp_path)
    write(tmp_path, "train.jsonl", [chat(), chat()], end="\n")
    assert len(load(tmp_path)["train"].examples) == 2
    write(tmp_path, "train.jsonl", [chat(), chat()], end="")
    assert len(load(tmp_path)["train"].examples) == 2


def test_crlf_and_byte_order_mark_are_accepted(tmp_path):
    (tmp_path / "train.jsonl").write_bytes(b"\xef\xbb\xbf" + (json.dumps(chat()) + "\r\n").encode() * 2)
    assert len(load(tmp_path)["train"].examples) == 2


def test_non_utf8_bytes(tmp_path):
    message = one_bad_line(tmp_path, b'{"text": "caf\xe9"}', good={"text": "a"})
    assert "  train.jsonl:2: not UTF-8 text (byte 0xe9 at column 14)" in message.splitlines()


@pytest.mark.parametrize(
    "line, what",
    [
        ('["hi", "there"]', "the record is an array, not a JSON object {...}"),
        ('"hi"', "the record is a string, not a JSON object {...}"),
        ("null", "the record is null, not a JSON object {...}"),
        ("42", "the record is a number, not a JSON object {...}"),
    ],
)
def test_record_that_is_not_an_object(tmp_path, line, what):
    assert f"  train.jsonl:2: {what}" in one_bad_line(tmp_path, line).splitlines()


def test_duplicate_key(tmp_path):
    message = one_bad_line(tmp_path, '{"text": "a", "text": "b"}', good={"text": "a"})
    assert "  train.jsonl:2: key 'text' appears twice" in message.splitlines()


@pytest.mark.parametrize(
    "record, what",
    [
        ({"mesages": []}, "no 'messages', 'prompt'/'completion' or 'text' key (keys: 'mesages') "
         "('mesages' looks like a typo of 'messages')"),
        ({}, "no 'messages', 'prompt'/'completion' or 'text' key (keys: none)"),
        ({"prompt": "a", "completon": "b"}, "has 'prompt' but no 'completion' ('completon' looks like a typo of 'completion')"),
        ({"completion": "b"}, "has 'completion' but no 'prompt'"),
        ({"text": "a", "messages": []}, "has keys of more than one format (messages, text); "
         "use messages, or prompt + completion, or text"),
    ],
)
def test_keys_that_match_no_format(tmp_path, record, what):
    assert f"  train.jsonl:2: {what}" in one_bad_line(tmp_path, record).splitlines()


def test_record_of_another_format_than_the_file(tmp_path):
    # The first record is the odd one: the file's format is what most records are.
    write(tmp_path, "train.jsonl", [{"prompt": "p", "completion": "c"}, chat(), chat(), chat()])
    lines = error(tmp_path).splitlines()
    assert lines[1] == (
        "  train.jsonl:1: a prompt/completion record, but this file holds chat (messages) records "
        "(3 of 4 lines); use one format per file"
    )
    assert len(lines) == 3


@pytest.mark.parametrize(
    "record, what",
    [
        ({"text": ""}, "'text' is empty"),
        ({"text": "  \n"}, "'text' is empty"),
        ({"text": 3}, "'text' must be a string, got a number"),
        ({"prompt": "", "completion": "c"}, "'prompt' is empty"),
        ({"prompt": "p", "completion": ""}, "'completion' is empty"),
        ({"prompt": "p", "completion": None}, "'completion' must be a string, got null"),
        ({"prompt": "p", "completion": "c", "tools": "x"}, "'tools' must be an array of objects"),
    ],
)
def test_empty_or_wrongly_typed_text_fields(tmp_path, record, what):
    good = {key: "ok" for key in record if key != "tools"}
    assert f"  train.jsonl:2: {what}" in one_bad_line(tmp_path, record, good=good).splitlines()


@pytest.mark.parametrize(
    "messages, what",
    [
        ({"role": "user"}, "'messages' must be an array, got an object"),
        ([], "'messages' is empty"),
        (["hi"], "message 1 is a string, not an object"),
        ([{"content": "hi"}], "message 1 has no 'role'"),
        ([{"rol": "user", "content": "hi"}], "message 1 has no 'role' ('rol' looks like a typo of 'role')"),
        ([{"role": "user", "content": "hi"}, {"role": "asistant", "content": "x"}],
         "message 2 has unknown role 'asistant' (did you mean 'assistant'?); roles are system, developer, user, assistant, tool"),
        ([{"role": "user"}], "message 1 has no 'content'"),
        ([{"role": "user", "content": ["a"]}], "message 1 'content' must be a string, got an array"),
        ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}], "message 2 'content' is empty"),
    ],
)
def test_bad_messages(tmp_path, messages, what):
    assert f"  train.jsonl:2: {what}" in one_bad_line(tmp_path, {"messages": messages}).splitlines()


def test_assistant_tool_call_without_content_is_fine(tmp_path):
    call = {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{}"}}]}
    record = {"messages": [{"role": "user", "content": "hi"}, call, {"role": "tool", "content": "42"}], "tools": [{}]}
    write(tmp_path, "train.jsonl", [record])
    assert len(load(tmp_path)["train"].examples) == 1


def test_problems_in_all_files_are_listed_together_and_capped(tmp_path):
    write(tmp_path, "train.jsonl", [chat()] + ["{oops"] * 25)
    write(tmp_path, "valid.jsonl", [chat(), ""])
    lines = error(tmp_path).splitlines()
    assert lines[0] == f"26 problems in the data in {tmp_path}:"
    assert lines[1] == "  train.jsonl:2: invalid JSON: Expecting property name enclosed in double quotes (column 2)"
    assert lines[20] == "  train.jsonl:21: invalid JSON: Expecting property name enclosed in double quotes (column 2)"
    assert lines[21] == "  and 6 more"
    assert len(lines) == 23


def test_file_whose_every_line_is_bad(tmp_path):
    write(tmp_path, "train.jsonl", [chat()])
    write(tmp_path, "valid.jsonl", ["{", {"text": ""}])
    assert error(tmp_path).splitlines()[1:] == [
        "  valid.jsonl:1: invalid JSON: Expecting property name enclosed in double quotes (column 2)",
        "  valid.jsonl:2: 'text' is empty",
        "  valid.jsonl: no usable records (every line has a problem)",
    ]
    assert error(tmp_path, skip_invalid=True) == (
        f"1 problem in the data in {tmp_path}:\n  valid.jsonl: no usable records (every line has a problem)"
    )


def test_tokenizer_failure_names_the_line(tmp_path):
    message = one_bad_line(tmp_path, chat(assistant="EXPLODE"))
    assert "  train.jsonl:2: could not tokenize: ValueError: the template refuses this" in message.splitlines()


# -- skip_invalid -----------------------------------------------------------------


def test_skip_invalid_skips_and_reports_count_and_first_lines(tmp_path):
    write(tmp_path, "train.jsonl", [chat("a"), "{", chat("b"), "", {"text": "t"}, "[]", chat("c", "EXPLODE"), chat("d")])
    logs = []
    splits = load(tmp_path, skip_invalid=True, log=lambda level, text: logs.append((level, text)))
    assert splits["train"].lines == [1, 3, 8]
    assert len(splits["train"].examples) == 3
    assert (
        "warning",
        "train.jsonl: skipped 4 bad lines (line 2: invalid JSON: Expecting property name enclosed in double quotes "
        "(column 2); line 4: blank line (every line must hold one JSON record); line 5: a text record, but this "
        "file holds chat (messages) records (4 of 8 lines); use one format per file; and 1 more)",
    ) in logs
    assert ("warning", "train.jsonl: skipped 1 bad line (line 7: could not tokenize: ValueError: the template refuses this)") in logs


def test_load_records_decides_the_format_per_file(tmp_path):
    path = write(tmp_path, "x.jsonl", [{"text": "a"}, {"text": "b"}, {"prompt": "p", "completion": "c"}])
    logs = []
    records, fmt = load_records(path, skip_invalid=True, log=lambda *a: logs.append(a))
    assert (records, fmt) == ([{"text": "a"}, {"text": "b"}], "text")
    assert len(logs) == 1 and logs[0][1].startswith("x.jsonl: skipped 1 bad line (line 3: a prompt/completion record")
    with pytest.raises(DataError, match="x.jsonl:3: a prompt/completion record"):
        load_records(path)


# -- tokenizing, masking, truncation ----------------------------------------------


def test_formats_tokenize_like_mlx_lm_with_prompt_offsets(tmp_path):
    write(tmp_path, "train.jsonl", [{"prompt": "ab", "completion": "xyz"}])
    (tokens, offset), = load(tmp_path, mask_prompt=True)["train"].examples
    prompt = [BOS, TURN, ROLE_IDS["user"], *TOK.encode("ab"), EOS, TURN, ROLE_IDS["assistant"]]
    assert tokens.dtype == np.int32
    assert tokens.tolist() == prompt[:-2] + [TURN, ROLE_IDS["assistant"], *TOK.encode("xyz"), EOS]
    assert offset == len(prompt)
    (tokens, offset), = load(tmp_path, mask_prompt=False)["train"].examples
    assert offset == 0
    write(tmp_path, "train.jsonl", [{"text": "hey"}])
    (tokens, offset), = load(tmp_path)["train"].examples
    assert (tokens.tolist(), offset) == ([*TOK.encode("hey"), EOS], 0)


def test_mask_prompt_on_text_is_refused(tmp_path):
    write(tmp_path, "train.jsonl", [{"text": "a"}])
    assert error(tmp_path, mask_prompt=True).splitlines()[1] == (
        "  train.jsonl: train.mask_prompt is on, but text records have no prompt to mask; "
        "use prompt/completion or chat records, or set train.mask_prompt=false"
    )


def test_truncation_and_dropping_are_counted_per_split(tmp_path):
    # chat(user, assistant) is 1 + (3 + len(user)) + (3 + len(assistant)) tokens; the prompt is 6 + len(user).
    write(tmp_path, "train.jsonl", [chat("a" * 4, "b" * 4), chat("a" * 30, "b"), chat("a" * 5, "b" * 20), chat("a" * 13, "b")])
    write(tmp_path, "valid.jsonl", [chat("a", "b")])
    logs = []
    splits = load(tmp_path, mask_prompt=True, max_seq_length=20, log=lambda *a: logs.append(a))
    assert ("warning", "train.jsonl: 3 of 4 records truncated to 20 tokens") in logs
    assert ("warning", "train.jsonl: dropped 1 of 4 records with nothing left to train on after prompt masking "
            "and truncation to 20 tokens (lines 2)") in logs
    assert not any(text.startswith("valid.jsonl") for _, text in logs)
    assert splits["train"].lines == [1, 3, 4]
    assert [len(t) for t, _ in splits["train"].examples] == [15, 20, 20]
    # Line 4: prompt is 19 tokens, so exactly one target (token 19) is left; it is kept.
    assert splits["train"].examples[2][1] == 19


def test_mask_prompt_on_a_chat_of_one_message(tmp_path):
    write(tmp_path, "train.jsonl", [chat(), {"messages": [{"role": "user", "content": "alone"}]}])
    assert error(tmp_path, mask_prompt=True).splitlines()[1] == (
        "  train.jsonl:2: train.mask_prompt is on, but a chat of one message has no prompt"
    )
    assert len(load(tmp_path, mask_prompt=False)["train"].examples) == 2


def test_train_smaller_than_batch_size(tmp_path):
    write(tmp_path, "train.jsonl", [chat(), chat(), chat()])
    assert error(tmp_path, batch_size=4) == (
        "train.jsonl: 3 usable records, fewer than train.batch_size=4; add records or lower train.batch_size"
    )
    write(tmp_path, "train.jsonl", [chat()])
    assert error(tmp_path, batch_size=2).startswith("train.jsonl: 1 usable record, fewer than")


def test_split_left_empty_after_dropping(tmp_path):
    write(tmp_path, "train.jsonl", [chat("a" * 40)])
    assert error(tmp_path, mask_prompt=True, max_seq_length=16).startswith("train.jsonl: no usable records left")


def test_real_builtin_tokenizer(tmp_path):
    tiny = pytest.importorskip("engine.tiny")
    from mlx_lm.utils import load_tokenizer

    tokenizer = load_tokenizer(tiny.ensure_builtin("builtin:tiny"))
    write(tmp_path, "train.jsonl", [chat("reverse: a b c", "c b a"), {"messages": [{"role": "user", "content": "x"}]}])
    write(tmp_path, "valid.jsonl", [{"prompt": "uppercase: a b", "completion": "A B"}])
    with pytest.raises(DataError, match="train.jsonl:2: train.mask_prompt is on, but a chat of one message has no prompt"):
        load_splits(tmp_path, tokenizer, mask_prompt=True, max_seq_length=64)
    assert len(load_splits(tmp_path, tokenizer, mask_prompt=False, max_seq_length=64)["train"].examples) == 2
    splits = load_splits(tmp_path, tokenizer, mask_prompt=True, max_seq_length=64, skip_invalid=True)
    (tokens, offset), = splits["train"].examples
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "reverse: a b c"}], add_generation_prompt=True)
    assert tokens[:offset].tolist() == list(prompt)
    assert tokenizer.decode(tokens[offset:].tolist()).startswith("c b a")
    assert splits["valid"].format == "completions"


# -- batching -----------------------------------------------------------------------


def examples(lengths, offset=0):
    return [(np.arange(1, n + 1, dtype=np.int32), offset) for n in lengths]


def test_batch_layout_padding_and_target_count():
    batch = make_batch([(np.array([5, 6, 7], np.int32), 1), (np.arange(1, 11, dtype=np.int32), 4)], [0, 1], 512)
    assert batch.tokens.dtype == np.int32 and batch.lengths.dtype == np.int32
    assert batch.tokens.shape == (2, 16)
    assert batch.tokens[0].tolist() == [5, 6, 7] + [0] * 13
    assert batch.lengths.tolist() == [[1, 3], [4, 10]]
    # Row 0 predicts tokens 1..2 (2 targets); row 1 predicts tokens 4..9 (6 targets). No padding counts.
    mask = batches.target_mask(batch.lengths, 16)
    assert np.flatnonzero(mask[0]).tolist() == [0, 1]
    assert np.flatnonzero(mask[1]).tolist() == [3, 4, 5, 6, 7, 8]
    assert batch.num_target_tokens == 8
    # mlx-lm's default_loss mask (steps <= length) would count one padding token more per row.
    steps = np.arange(1, 16)
    mlx_lm_mask = (steps >= batch.lengths[:, :1]) & (steps <= batch.lengths[:, 1:])
    assert mlx_lm_mask.sum() == batch.num_target_tokens + 2


def test_batch_width_is_capped_by_max_seq_length():
    batch = make_batch(examples([10, 30]), [0, 1], 27)
    assert batch.tokens.shape == (2, 27)
    assert batch.lengths[:, 1].tolist() == [10, 27]


def test_epoch_batches_are_deterministic_and_cover_every_example():
    lengths = np.random.default_rng(1).integers(5, 300, 103)
    first = epoch_batches(lengths, 8, seed=3, epoch=0)
    assert [b.tolist() for b in first] == [b.tolist() for b in epoch_batches(lengths, 8, seed=3, epoch=0)]
    assert len(first) == 13 and all(len(b) == 8 for b in first)
    counts = np.bincount(np.concatenate(first), minlength=103)
    assert counts.min() == 1 and counts.sum() == 104  # 103 examples; the last batch wraps one of them
    assert [b.tolist() for b in first] != [b.tolist() for b in epoch_batches(lengths, 8, seed=3, epoch=1)]
    assert [b.tolist() for b in first] != [b.tolist() for b in epoch_batches(lengths, 8, seed=4, epoch=0)]


def test_groups_change_between_epochs_even_for_a_small_dataset():
    lengths = np.arange(10, 74)  # all distinct: a plain sort would group them identically every epoch
    groups = [{frozenset(b.tolist()) for b in epoch_batches(lengths, 4, 0, epoch)} for epoch in range(2)]
    assert groups[0] != groups[1]


def test_length_grouping_cuts_padding():
    lengths = np.random.default_rng(0).integers(8, 1024, 2000)

    def padded(batches):
        return sum(len(b) * lengths[b].max() for b in batches) / lengths.sum() - 1

    ours = padded(epoch_batches(lengths, 8, 0, 0))
    shuffled = np.random.default_rng(0).permutation(2000)
    unsorted = padded([shuffled[i : i + 8] for i in range(0, 2000, 8)])
    assert ours < 0.25 * unsorted


def test_resumed_stream_yields_the_same_batches():
    split = examples(np.random.default_rng(2).integers(3, 60, 37))
    stream = BatchStream(split, 4, seed=7, max_seq_length=32)
    assert stream.batches_per_epoch == 10
    straight = [stream.next() for _ in range(25)]
    assert stream.epochs_done() == 2.5 and stream.locate() == (2, 5)

    first = BatchStream(split, 4, seed=7, max_seq_length=32)
    for _ in range(13):
        first.next()
    saved = json.loads(json.dumps(first.state()))
    resumed = BatchStream.from_state(split, saved, max_seq_length=32)
    assert resumed.position == 13
    for expected in straight[13:]:
        got = resumed.next()
        assert np.array_equal(got.tokens, expected.tokens) and np.array_equal(got.lengths, expected.lengths)
        assert np.array_equal(got.indices, expected.indices)
    epoch_one = np.concatenate([b.indices for b in straight[10:20]])
    assert set(epoch_one.tolist()) == set(range(37))


def test_seek_refuses_a_different_order():
    split = examples(range(3, 20))
    state = BatchStream(split, 4, seed=1, max_seq_length=32).state()
    with pytest.raises(DataError, match="cannot resume the data order: seed was 1, now 2"):
        BatchStream(split, 4, seed=2, max_seq_length=32).seek(state)
    with pytest.raises(DataError, match="number of training examples was 17, now 16"):
        BatchStream(split[:16], 4, seed=1, max_seq_length=32).seek(state)
    changed = split[:-1] + [(np.arange(5, dtype=np.int32), 0)]
    with pytest.raises(DataError, match="the training examples changed since the checkpoint"):
        BatchStream(changed, 4, seed=1, max_seq_length=32).seek(state)
    with pytest.raises(DataError, match="no valid position"):
        BatchStream(split, 4, seed=1, max_seq_length=32).seek({})


def test_stream_needs_a_full_batch():
    with pytest.raises(DataError, match="3 training examples are fewer than batch_size=4"):
        BatchStream(examples([5, 6, 7]), 4, 0, 32)


def test_eval_batches_cover_everything_in_a_fixed_order():
    split = examples(np.random.default_rng(3).integers(3, 40, 11))
    batches = list(eval_batches(split, 4, 64))
    assert [len(b.indices) for b in batches] == [4, 4, 3]
    assert sorted(np.concatenate([b.indices for b in batches]).tolist()) == list(range(11))
    again = list(eval_batches(split, 4, 64))
    assert all(np.array_equal(a.tokens, b.tokens) for a, b in zip(batches, again))


def test_eval_batches_limited_to_n_batches_sample_fairly():
    split = examples(np.arange(1, 201))  # example i has length i + 1
    batches = list(eval_batches(split, 10, 512, num_batches=2))
    chosen = np.concatenate([b.indices for b in batches])
    assert len(batches) == 2 and len(set(chosen.tolist())) == 20
    assert chosen.max() > 100  # a fair sample, not the 20 shortest
    assert [b.indices.tolist() for b in batches] == [b.indices.tolist() for b in eval_batches(split, 10, 512, 2)]


def test_importing_data_pulls_in_neither_mlx_nor_ui():
    import subprocess
    import sys

    code = "import sys, engine.data; print(sorted({m.split('.')[0] for m in sys.modules} & {'mlx', 'mlx_lm', 'transformers', 'textual', 'rich'}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(__file__).parent.parent)
    assert out.stdout.strip() == "[]"
