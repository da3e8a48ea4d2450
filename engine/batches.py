"""Batches: plain numpy, length-bucketed, and a pure function of (seed, epoch).

A resumed run sees exactly the batches the first one would: `BatchStream`
has an explicit position that a checkpoint saves. No mlx here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from engine.data import DataError, Example, Split

PAD_TO = 8  # batch width is rounded up to a multiple of this
CHUNK_BATCHES = 64  # examples are sorted by length within random chunks of this many batches
LENGTH_JITTER = 0.1  # sort keys are lengths times U(1, 1 + this), so groups vary between epochs


@dataclass(frozen=True)
class Batch:
    """One padded batch, laid out like mlx-lm's iterate_batches output.

    tokens: int32 (B, L), each row an example padded with 0 on the right; L is
        the longest row rounded up to a multiple of 8, at most max_seq_length.
    lengths: int32 (B, 2), per row (offset, length): tokens[i, :length] is the
        example and its first `offset` tokens are prompt (masked out of the loss).
    indices: int64 (B,), which examples of the split the rows are.
    num_target_tokens: how many targets count in the loss: target_mask(...).sum().
    """

    tokens: np.ndarray
    lengths: np.ndarray
    indices: np.ndarray
    num_target_tokens: int


def target_mask(lengths: np.ndarray, width: int) -> np.ndarray:
    """Which targets count in the loss: bool (B, width - 1).

    With inputs = tokens[:, :-1] and targets = tokens[:, 1:], target j predicts
    token j + 1 and counts iff offset <= j + 1 <= length - 1: never a prompt
    token (when masked) and never padding. (mlx-lm's default_loss uses
    j + 1 <= length, which counts one padding token per row.)
    """
    positions = np.arange(1, width)
    return (positions >= lengths[:, 0:1]) & (positions < lengths[:, 1:2])


def make_batch(examples: Sequence[Example], indices: Sequence[int], max_seq_length: int) -> Batch:
    """Pad the chosen examples into one Batch (rows longer than max_seq_length are cut)."""
    rows = [examples[i] for i in indices]
    longest = max(len(tokens) for tokens, _ in rows)
    width = min(-(-longest // PAD_TO) * PAD_TO, max_seq_length)
    tokens = np.zeros((len(rows), width), np.int32)
    lengths = np.zeros((len(rows), 2), np.int32)
    for r, (row, offset) in enumerate(rows):
        n = min(len(row), width)
        tokens[r, :n] = row[:n]
        lengths[r] = (offset, n)
    return Batch(tokens, lengths, np.asarray(indices, np.int64), int(target_mask(lengths, width).sum()))


def split_batch(batch: Batch, parts: int) -> list[Batch]:
    """Cut a batch into `parts` row groups (micro-batches), each trimmed to its own longest row.

    With a summed loss the parts' gradients add up to the whole batch's, so
    splitting saves memory without changing what is learned.
    """
    if parts <= 1:
        return [batch]
    pieces = []
    for rows in np.array_split(np.arange(len(batch.tokens)), min(parts, len(batch.tokens))):
        lengths = batch.lengths[rows]
        width = min(-(-int(lengths[:, 1].max()) // PAD_TO) * PAD_TO, batch.tokens.shape[1])
        pieces.append(Batch(batch.tokens[rows, :width], lengths, batch.indices[rows], int(target_mask(lengths, width).sum())))
    return pieces


def epoch_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The batches of one epoch, as arrays of example indices; a pure function of its arguments.

    Examples are shuffled with default_rng([seed, epoch]), sorted by (jittered)
    length within chunks of CHUNK_BATCHES batches and cut into batches of
    batch_size, so a batch holds examples of similar length; the batch order
    is then shuffled. Every example appears in the epoch. When batch_size does
    not divide the count, the last batch is filled up (wrapped) with examples
    just before it in sorted order, so those few appear twice and every batch
    is full: ceil(n / batch_size) batches in all.
    """
    lengths = np.asarray(lengths)
    n = len(lengths)
    if n < batch_size:
        raise DataError(f"{n} examples are fewer than batch_size={batch_size}")
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n)
    keys = lengths[order] * rng.uniform(1.0, 1.0 + LENGTH_JITTER, n)
    chunk = CHUNK_BATCHES * batch_size
    for start in range(0, n, chunk):
        part = slice(start, start + chunk)
        order[part] = order[part][np.argsort(keys[part], kind="stable")]
    batches = [order[i : i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]
    if n % batch_size:
        batches.append(order[n - batch_size :])
    return [batches[i] for i in rng.permutation(len(batches))]


def _fingerprint(examples: Sequence[Example]) -> str:
    digest = hashlib.sha256()
    for tokens, offset in examples:
        digest.update(np.asarray([len(tokens), offset], np.int64).tobytes())
        digest.update(np.ascontiguousarray(tokens, np.int32).tobytes())
    return digest.hexdigest()[:16]


class BatchStream:
    """Training batches, epoch after epoch, from an explicit position.

    position counts batches handed out so far; batch `position` is batch
    position % batches_per_epoch of epoch position // batches_per_epoch (see
    epoch_batches). state() records the position; a stream rebuilt with
    from_state() or seek() yields exactly the batches the original would have.
    """

    def __init__(self, dataset: Split | Sequence[Example], batch_size: int, seed: int, max_seq_length: int):
        self.examples = dataset.examples if isinstance(dataset, Split) else list(dataset)
        self.batch_size, self.seed, self.max_seq_length = batch_size, seed, max_seq_length
        self.lengths = np.array([len(tokens) for tokens, _ in self.examples])
        if len(self.examples) < batch_size:
            raise DataError(f"{len(self.examples)} training examples are fewer than batch_size={batch_size}")
        self.batches_per_epoch = -(-len(self.examples) // batch_size)
        self.position = 0
        self.fingerprint = _fingerprint(self.examples)
        self._epoch: tuple[int, list[np.ndarray]] | None = None

    def locate(self, position: int | None = None) -> tuple[int, int]:
        """position (default: the current one) -> (epoch, index of the batch in that epoch)."""
        return divmod(self.position if position is None else position, self.batches_per_epoch)

    def epochs_done(self) -> float:
        """Epochs handed out so far, fractional (1.5 = one and a half)."""
        return self.position / self.batches_per_epoch

    def next(self) -> Batch:
        """The batch at the current position; advances the position by one."""
        epoch, index = self.locate()
        if self._epoch is None or self._epoch[0] != epoch:
            self._epoch = (epoch, epoch_batches(self.lengths, self.batch_size, self.seed, epoch))
        self.position += 1
        return make_batch(self.examples, self._epoch[1][index], self.max_seq_length)

    def state(self) -> dict:
        """JSON-serialisable: the position and what the order depends on."""
        return {"position": self.position, "seed": self.seed, "batch_size": self.batch_size,
                "num_examples": len(self.examples), "fingerprint": self.fingerprint}

    def seek(self, state: dict) -> None:
        """Move to a position saved by state(); DataError if the order would differ."""
        if not isinstance(state, dict) or not isinstance(state.get("position"), int) or state["position"] < 0:
            raise DataError(f"cannot resume the data order: no valid position in {state!r}")
        mine = self.state()
        for key, what in (("seed", "seed"), ("batch_size", "batch_size"), ("num_examples", "number of training examples")):
            if key in state and state[key] != mine[key]:
                raise DataError(f"cannot resume the data order: {what} was {state[key]}, now {mine[key]}")
        if state.get("fingerprint", mine["fingerprint"]) != mine["fingerprint"]:
            raise DataError("cannot resume the data order: the training examples changed since the checkpoint")
        self.position = state["position"]

    @classmethod
    def from_state(cls, dataset: Split | Sequence[Example], state: dict, max_seq_length: int) -> BatchStream:
        """A stream with the seed and batch_size of `state`, at its position."""
        stream = cls(dataset, state["batch_size"], state["seed"], max_seq_length)
        stream.seek(state)
        return stream


def eval_batches(split: Split | Sequence[Example], batch_size: int, max_seq_length: int, num_batches: int = -1) -> Iterator[Batch]:
    """Batches for evaluation, the same every call; the last may hold fewer than batch_size.

    num_batches=-1 covers every example once. Otherwise the first
    num_batches * batch_size examples of a fixed shuffle (seed 0) are used, so
    a partial evaluation is a fair sample, not the shortest records. Examples
    are sorted by length to cut padding; the order does not change a
    token-weighted loss.
    """
    examples = split.examples if isinstance(split, Split) else list(split)
    chosen = np.arange(len(examples))
    if 0 <= num_batches and num_batches * batch_size < len(examples):
        chosen = np.random.default_rng(0).permutation(len(examples))[: num_batches * batch_size]
    lengths = np.array([len(examples[i][0]) for i in chosen], dtype=np.int64)
    chosen = chosen[np.argsort(lengths, kind="stable")]
    for start in range(0, len(chosen), batch_size):
        yield make_batch(examples, chosen[start : start + batch_size], max_seq_length)
