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

    def to_dict(self) -> dict:
        return asdict(self)


class RunAborted(RuntimeError):
    """Training cannot go on (e.g. the loss stayed non-finite); the message says why."""


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
) -> bool:
    """Train from `state.step` to `args.iters`, checkpointing at the end.

    Return True if it ran to the end, False if stopped (after a checkpoint).
    """
    loss_and_grad = nn.value_and_grad(model, loss)

    def grad_step(tokens, lengths):
        (value, ntoks), grads = loss_and_grad(model, tokens, lengths)
        return value, ntoks, grads

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
        if math.isfinite(val_loss) and (state.best_val_loss is None or val_loss < state.best_val_loss):
            state.best_val_loss = val_loss
            if state.step > 0:
                state.best_checkpoint = save(state, "best")
                return True
        return False

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
        mx.random.seed(step_seed(seed, state.step + 1))
        step_loss, step_tokens, grads = mx.array(0.0), mx.array(0), None
        for _ in range(args.grad_accumulation):
            batch = stream.next()
            value, ntoks, micro_grads = grad_step(mx.array(batch.tokens), mx.array(batch.lengths))
            step_loss, step_tokens = step_loss + value, step_tokens + ntoks
            grads = micro_grads if grads is None else tree_map(mx.add, grads, micro_grads)
        if args.grad_accumulation > 1:
            grads = tree_map(lambda g: g / args.grad_accumulation, grads)
            step_loss = step_loss / args.grad_accumulation
        mx.eval(step_loss, step_tokens, grads)

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


def check_weights_finite(model: nn.Module) -> bool:
    """True when every trainable parameter is finite (checked before any save)."""
    return _finite(model.trainable_parameters())
