"""The training loop: compiled steps, accumulation, eval, pause/stop, exact resume.

Read it top to bottom. Collaborators come in as arguments: the batch stream,
the eval batches, the loss, where events go (`emit`), how checkpoints are
written (`save`), and the `Control` that carries pause/stop requests from
another thread. Nothing here prints.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_map

from engine import protocol as P
from engine.batches import split_batch
from engine.control import Control  # noqa: F401  (re-exported: callers build one per run)


@dataclass
class TrainState:
    """Everything besides weights and optimizer state that a checkpoint must carry."""

    step: int = 0  # optimizer steps completed
    trained_tokens: int = 0
    best_val_loss: float | None = None
    best_checkpoint: str | None = None
    bad_steps_total: int = 0
    stream: dict = field(default_factory=dict)  # the batch stream's position
    micro_splits: int = 1  # each batch runs as this many micro-batches (raised when memory runs short)

    def to_dict(self) -> dict:
        return asdict(self)


class RunAborted(RuntimeError):
    """Training cannot go on (e.g. the loss stayed non-finite); the message says why."""


class MemoryPressure(RuntimeError):
    """A step needed more memory than the limit allows."""


def _is_out_of_memory(error: BaseException) -> bool:
    text = str(error).lower()
    return isinstance(error, MemoryPressure) or (
        isinstance(error, RuntimeError) and any(w in text for w in ("out of memory", "malloc", "memory limit", "allocate"))
    )


def masked_loss(model: nn.Module, tokens: mx.array, lengths: mx.array):
    """Mean cross-entropy over target tokens.

    Target position j predicts token j + 1 and counts iff offset <= j + 1 < length,
    so neither the prompt (when masked) nor any padding is in the loss.
    """
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    logits = model(inputs)
    positions = mx.arange(1, targets.shape[1] + 1)
    mask = (positions >= lengths[:, 0:1]) & (positions < lengths[:, 1:2])
    ce = nn.losses.cross_entropy(logits, targets) * mask
    ntoks = mask.sum()
    return ce.astype(mx.float32).sum() / ntoks, ntoks


def step_seed(seed: int, step: int) -> int:
    """The RNG seed for one step; mlx's RNG state cannot be restored, so every step reseeds."""
    return (seed * 1_000_003 + step) % (2**32)


def evaluate(model: nn.Module, batches: Iterable, loss=masked_loss) -> float:
    """Token-weighted mean loss over the given batches."""
    model.eval()
    total, ntoks = mx.array(0.0), mx.array(0)
    for batch in batches:
        value, n = loss(model, mx.array(batch.tokens), mx.array(batch.lengths))
        total, ntoks = total + value * n, ntoks + n
        mx.eval(total, ntoks)
    model.train()
    return (total / ntoks).item() if ntoks.item() else float("nan")


def _finite(tree) -> bool:
    return all(mx.all(mx.isfinite(v)).item() for _, v in tree_flatten(tree))


def train(
    *,
    model: nn.Module,
    optimizer,
    stream,
    eval_batches: Callable[[], Iterable] | None,
    args,
    seed: int,
    state: TrainState,
    emit: Callable[[P.Event], None],
    save: Callable[[TrainState, str], str],
    control: Control,
    stop_at: int | None = None,
    loss=masked_loss,
    memory_limit_bytes: int = 0,
    clear_cache_every: int = 0,
    sample: Callable[[], tuple[str, str]] | None = None,
) -> bool:
    """Train from `state.step` to `args.iters`, checkpointing at the end.

    Return True if it ran to the end, False if stopped (after a checkpoint).
    """
    def summed(model, tokens, lengths):
        # The loss summed over target tokens: micro-batches then add up exactly to their whole.
        mean, ntoks = loss(model, tokens, lengths)
        return mean * ntoks, ntoks

    loss_and_grad = nn.value_and_grad(model, summed)

    def grad_step(tokens, lengths):
        (total, ntoks), grads = loss_and_grad(model, tokens, lengths)
        return total, ntoks, grads

    def apply_update(grads):
        optimizer.update(model, grads)

    if args.compile:
        # model.state is an output too: value_and_grad writes the traced parameters into the model.
        grad_step = mx.compile(grad_step, inputs=[model.state, mx.random.state], outputs=[model.state, mx.random.state])
        apply_update = mx.compile(apply_update, inputs=[model.state, optimizer.state], outputs=[model.state, optimizer.state])

    def run_eval() -> bool:
        """Evaluate; on a new best, checkpoint it. Return True if a checkpoint was written."""
        if eval_batches is None:
            return False
        tic = time.perf_counter()
        val_loss = evaluate(model, eval_batches(), loss)
        emit(P.EvalReported(step=state.step, val_loss=val_loss, seconds_taken=time.perf_counter() - tic))
        if sample is not None:  # greedy: it draws no random numbers, so training is unchanged
            model.eval()
            prompt, text = sample()
            model.train()
            emit(P.SampleGenerated(step=state.step, prompt=prompt, text=text))
        if math.isfinite(val_loss) and (state.best_val_loss is None or val_loss < state.best_val_loss):
            state.best_val_loss = val_loss
            if state.step > 0:
                state.best_checkpoint = save(state, "best")
                return True
        return False

    def compute_step():
        """Loss, target-token count and mean gradient of one optimizer step (not yet applied)."""
        mx.random.seed(step_seed(seed, state.step + 1))
        mx.reset_peak_memory()
        total, ntoks, grads = mx.array(0.0), mx.array(0), None
        for _ in range(args.grad_accumulation):
            for micro in split_batch(stream.next(), state.micro_splits):
                part_total, part_ntoks, part_grads = grad_step(mx.array(micro.tokens), mx.array(micro.lengths))
                total, ntoks = total + part_total, ntoks + part_ntoks
                grads = part_grads if grads is None else tree_map(mx.add, grads, part_grads)
                mx.eval(total, ntoks, grads)  # one micro-batch's activations in memory at a time
                if memory_limit_bytes and mx.get_peak_memory() > memory_limit_bytes:
                    raise MemoryPressure(f"{mx.get_peak_memory() / 1e9:.2f} GB used, over the {memory_limit_bytes / 1e9:.2f} GB limit")
        return total / ntoks, ntoks, tree_map(lambda g: g / ntoks, grads)

    def shrink_micro_batch(error: BaseException) -> None:
        """Recover from running short of memory: halve the micro-batch (the step stays the same), save."""
        batch_size = args.batch_size
        if state.micro_splits >= batch_size:
            raise RunAborted(
                f"step {state.step + 1} does not fit in memory even one sequence at a time ({error}); "
                "set train.grad_checkpoint=true, lower train.max_seq_length, or quantize the model"
            ) from error
        state.micro_splits = min(state.micro_splits * 2, batch_size)
        mx.clear_cache()
        micro = -(-batch_size // state.micro_splits)
        emit(P.LogMessage(
            "warning",
            f"step {state.step + 1} ran out of memory ({error}); retrying with micro-batches of {micro} "
            f"({state.micro_splits} per batch): the same examples and the same update, in less memory",
        ))
        save(state, "memory")

    model.train()
    if state.step == 0:
        run_eval()  # the untrained baseline, so curves start where training starts

    window_loss, window_steps, window_tokens, window_time = 0.0, 0, 0, 0.0
    bad_in_a_row = 0
    started = time.perf_counter()
    while state.step < args.iters:
        control.wait_while_paused(
            on_pause=lambda: emit(P.Paused(step=state.step)),
            on_resume=lambda: emit(P.Resumed(step=state.step)),
            on_checkpoint=lambda: save(state, "requested"),
        )
        if control.take_checkpoint_request():
            save(state, "requested")
        if control.stop_requested:
            save(state, "stop")
            return False

        tic = time.perf_counter()
        position = stream.state()
        try:
            step_loss, step_tokens, grads = compute_step()
        except Exception as error:
            if not _is_out_of_memory(error):
                raise
            stream.seek(position)  # the step is retried on the same data
            shrink_micro_batch(error)
            continue

        state.step += 1
        state.stream = stream.state()
        loss_value, tokens = step_loss.item(), step_tokens.item()
        if math.isfinite(loss_value):
            bad_in_a_row = 0
            apply_update(grads)
            mx.eval(model.state, optimizer.state)
            window_loss += loss_value
            window_steps += 1
            window_tokens += tokens
            state.trained_tokens += tokens
        else:
            bad_in_a_row += 1
            state.bad_steps_total += 1
            emit(P.LogMessage("warning", f"step {state.step}: loss is {loss_value}; update skipped ({bad_in_a_row} in a row)"))
            if bad_in_a_row >= args.max_bad_steps:
                raise RunAborted(
                    f"the loss was not finite for {bad_in_a_row} steps in a row (last at step {state.step}); "
                    "try a lower train.learning_rate or check the data. The last checkpoint is untouched."
                )
        if clear_cache_every and state.step % clear_cache_every == 0:
            mx.clear_cache()
        window_time += time.perf_counter() - tic

        if window_steps and (state.step % args.steps_per_report == 0 or state.step == args.iters):
            emit(
                P.StepReported(
                    step=state.step,
                    epoch=stream.epochs_done(),
                    train_loss=window_loss / window_steps,
                    learning_rate=float(optimizer.learning_rate.item()),
                    tokens_per_second=window_tokens / window_time if window_time else 0.0,
                    trained_tokens=state.trained_tokens,
                    peak_memory_gb=mx.get_peak_memory() / 1e9,
                    seconds_elapsed=time.perf_counter() - started,
                )
            )
            window_loss, window_steps, window_tokens, window_time = 0.0, 0, 0, 0.0

        saved = (state.step % args.steps_per_eval == 0 or state.step == args.iters) and run_eval()
        if state.step == args.iters:
            if not saved:
                save(state, "final")
            return True
        if state.step == stop_at:
            save(state, "stop")
            return False
        if state.step % args.save_every == 0 and not saved:
            save(state, "periodic")
    return True


def probe_batch_size(model: nn.Module, seq_length: int, ceiling: int, limit_bytes: int, loss=masked_loss) -> tuple[int, float]:
    """The largest power-of-two batch (<= ceiling) whose forward and backward at seq_length stay
    under 90% of limit_bytes. Returns (batch, peak GB at that batch); batch 0 if even 1 does not fit."""
    grad_fn = nn.value_and_grad(model, loss)
    best, best_peak, batch = 0, 0.0, 1
    while batch <= ceiling:
        tokens = mx.ones((batch, seq_length), dtype=mx.int32)
        lengths = mx.array([[0, seq_length]] * batch)
        mx.clear_cache()
        mx.reset_peak_memory()
        try:
            (value, _), grads = grad_fn(model, tokens, lengths)
            mx.eval(value, grads)
        except RuntimeError:  # Metal raises when an allocation is far beyond the limit
            break
        peak = mx.get_peak_memory()
        del grads
        if peak > 0.9 * limit_bytes:
            break
        best, best_peak, batch = batch, peak / 1e9, batch * 2
    mx.clear_cache()
    return best, best_peak


def check_weights_finite(model: nn.Module) -> bool:
    """True when every trainable parameter is finite (checked before any save)."""
    return _finite(model.trainable_parameters())
