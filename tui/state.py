"""What the dashboard knows about one run, folded from engine events.

Pure logic: no Textual, no files, no clock. The screen feeds events in and
hands the result to widgets, so every number on screen comes from an event
(which is also what makes the snapshots deterministic).
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from pathlib import Path

from engine import protocol as P
from engine.trials import format_params

ACTIVE_STATES = ("starting", "running", "paused", "stopping")
PAUSED_DETAIL = "model kept in memory; p resumes"
LOG_HEADER = "Last lines of engine.log:"
LOG_TAIL_SHOWN = 6  # lines of engine.log in the failure report: enough to see why, few enough to fit 80x24
FINAL_STATES = ("finished", "failed")


@dataclass
class Series:
    """A curve: y values against step."""

    steps: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)

    def add(self, step: int, value: float) -> None:
        self.steps.append(step)
        self.values.append(value)

    def keep_through(self, step: int) -> None:
        """Drop points after step (a resumed run repeats the steps after its checkpoint)."""
        while self.steps and self.steps[-1] > step:
            self.steps.pop()
            self.values.pop()

    def __len__(self) -> int:
        return len(self.steps)


@dataclass
class Update:
    """Which parts of the view an event batch changed, and the log lines it added."""

    state: bool = False
    progress: bool = False
    chart: bool = False
    memory: bool = False
    sample: bool = False
    study: bool = False  # the study's story moved on (a trial started or ended): read its trials again
    log_lines: list[str] = field(default_factory=list)

    def merge(self, other: Update) -> None:
        self.state |= other.state
        self.study |= other.study
        self.progress |= other.progress
        self.chart |= other.chart
        self.memory |= other.memory
        self.sample |= other.sample
        self.log_lines += other.log_lines


@dataclass
class RunView:
    """One run as the dashboard shows it."""

    state: str = "idle"  # idle, starting, running, paused, stopping, finished, failed
    run_dir: str = ""
    detail: str = ""  # one line beside the state: "pausing at the next step", "stopped early at step 40"
    total_steps: int = 0
    start_step: int = 0
    step: int = 0
    epoch: float = 0.0
    train_loss: float | None = None
    learning_rate: float | None = None
    tokens_per_second: float | None = None
    eta_s: float | None = None
    last_eval: P.EvalReported | None = None
    best_val_loss: float | None = None
    last_checkpoint: str | None = None
    train: Series = field(default_factory=Series)
    val: Series = field(default_factory=Series)
    memory: P.MemorySampled | None = None
    sample: P.SampleGenerated | None = None  # the model's latest answer to train.sample_prompt
    failure: list[str] = field(default_factory=list)
    stopped_early: bool = False
    in_study: bool = False  # a study's trial: a stopped trial is run again by the study, not resumed by hand
    _rate_ref: tuple[int, float] | None = None
    _seconds_per_step: float | None = None
    _before_request: tuple[str, str] | None = None  # state and detail before the latest request, until it is delivered

    @property
    def run_name(self) -> str:
        return Path(self.run_dir).name if self.run_dir else ""

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    def request(self, command: P.Command) -> Update:
        """The user asked for something; show it until the engine confirms."""
        self._before_request = (self.state, self.detail)
        if isinstance(command, P.Stop):
            self.state, self.detail = "stopping", "saving a checkpoint, then stopping"
        elif isinstance(command, P.Pause):
            self.detail = "pausing at the next step"
        elif isinstance(command, P.Resume):
            self.detail = "resuming"
        elif isinstance(command, P.SaveCheckpoint):
            self.detail = "saving a checkpoint"
        return Update(state=True)

    def undelivered(self) -> Update:
        """The engine never got the latest request: show what was true before it."""
        if self._before_request is not None:
            self.state, self.detail = self._before_request
            self._before_request = None
        return Update(state=True)

    def apply(self, events: list[P.Event]) -> Update:
        update = Update()
        for event in events:
            update.merge(self._apply(event))
        return update

    def _apply(self, e: P.Event) -> Update:
        if isinstance(e, P.StepReported):
            return self._step(e)
        if isinstance(e, P.MemorySampled):
            self.memory = e
            return Update(memory=True)
        if isinstance(e, P.EvalReported):
            self.last_eval = e
            self.val.add(e.step, e.val_loss)
            if e.val_loss == e.val_loss and (self.best_val_loss is None or e.val_loss < self.best_val_loss):
                self.best_val_loss = e.val_loss
            return Update(progress=True, chart=True, log_lines=[f"eval at step {e.step}: val_loss {e.val_loss:.4f} ({e.seconds_taken:.1f} s)"])
        if isinstance(e, P.SampleGenerated):
            self.sample = e
            return Update(sample=True, log_lines=[f"sample at step {e.step}: {e.text!r}"])
        if isinstance(e, P.RunStarted):
            return self._started(e)
        if isinstance(e, P.CheckpointSaved):
            self.step = max(self.step, e.step)
            self.last_checkpoint = e.path
            if self.detail == "saving a checkpoint":
                self.detail = PAUSED_DETAIL if self.state == "paused" else ""
            return Update(state=True, log_lines=[f"checkpoint ({e.reason}) at step {e.step}: {self._short(e.path)}"])
        if isinstance(e, P.Paused):
            self.step = max(self.step, e.step)
            if self.state != "stopping":
                self.state, self.detail = "paused", PAUSED_DETAIL
            return Update(state=True, log_lines=[f"paused at step {e.step}"])
        if isinstance(e, P.Resumed):
            if self.state != "stopping":
                self.state, self.detail = "running", ""
            self._rate_ref = None  # the pause is not training time
            return Update(state=True, log_lines=[f"resumed at step {e.step}"])
        if isinstance(e, P.LogMessage):
            return Update(log_lines=[f"warning: {e.text}" if e.level == "warning" else e.text])
        if isinstance(e, P.RunFinished):
            return self._finished(e)
        if isinstance(e, P.RunFailed):
            self.state, self.detail = "failed", e.reason
            self.last_checkpoint = e.last_checkpoint or self.last_checkpoint
            self.eta_s = None
            self.failure = [f"The run failed at step {e.step}: {e.reason}", *e.details, *self._resume_hint()]
            return Update(state=True, progress=True, log_lines=[f"run failed at step {e.step}: {e.reason}"])
        if isinstance(e, P.EngineGone):
            return self._gone(e)
        return Update()

    def _started(self, e: P.RunStarted) -> Update:
        self.state, self.detail, self.failure, self.stopped_early = "running", "", [], False
        self.run_dir = e.run_dir or self.run_dir
        self.total_steps, self.start_step, self.step = e.total_steps, e.start_step, e.start_step
        self.train.keep_through(e.start_step)
        self.val.keep_through(e.start_step)
        self._rate_ref, self.eta_s = None, None
        what = f"resumed at step {e.start_step}" if e.resumed_from else "started"
        line = (
            f"{what}: {e.total_steps} steps, {e.train_examples} train / {e.valid_examples} valid examples, "
            f"{e.trainable_parameters / 1e6:.3f}M of {e.total_parameters / 1e6:.3f}M parameters trainable"
        )
        return Update(state=True, progress=True, chart=True, log_lines=[line])

    def _step(self, e: P.StepReported) -> Update:
        self.step, self.epoch = e.step, e.epoch
        self.train_loss, self.learning_rate, self.tokens_per_second = e.train_loss, e.learning_rate, e.tokens_per_second
        self.train.add(e.step, e.train_loss)
        if self.state == "starting":
            self.state = "running"
        # ETA from the pace since the run (re)started or resumed; a pause does not count.
        if self._rate_ref is None:
            self._rate_ref = (e.step, e.seconds_elapsed)
        elif e.step > self._rate_ref[0]:
            self._seconds_per_step = (e.seconds_elapsed - self._rate_ref[1]) / (e.step - self._rate_ref[0])
        if self._seconds_per_step is not None:
            self.eta_s = max(self.total_steps - e.step, 0) * self._seconds_per_step
        return Update(progress=True, chart=True)

    def _finished(self, e: P.RunFinished) -> Update:
        self.state, self.eta_s, self.step = "finished", None, e.step
        self.best_val_loss = e.best_val_loss if e.best_val_loss is not None else self.best_val_loss
        if e.stopped_early and not self.in_study:
            self.detail = f"stopped at step {e.step}; continue with: lora-mlx resume {self.run_dir}"
        else:
            self.detail = f"adapters in {self._short(e.adapter_path)}"
        self.stopped_early = e.stopped_early
        verb = "stopped" if e.stopped_early else "finished"
        best = f", best val_loss {e.best_val_loss:.4f}" if e.best_val_loss is not None else ""
        lines = [f"{verb} at step {e.step}{best}"]
        if e.stopped_early and not self.in_study:
            lines.append(f"continue with: lora-mlx resume {self.run_dir}")
        return Update(state=True, progress=True, log_lines=lines)

    def _gone(self, e: P.EngineGone) -> Update:
        self.state, self.eta_s = "failed", None
        self.last_checkpoint = e.last_checkpoint or self.last_checkpoint
        self.detail = f"the engine process ended unexpectedly ({describe_exit(e.exit_code)})"
        self.failure = [
            f"The engine process ended without finishing: {describe_exit(e.exit_code)}.",
            *([e.diagnosis[0].upper() + e.diagnosis[1:] + "."] if e.diagnosis else []),
            *self._resume_hint(),
            LOG_HEADER if e.log_tail else "engine.log is empty.",
            # The diagnosis takes two lines at 80 columns: show two fewer log lines so the newest still fit.
            *("  " + line for line in e.log_tail[-(LOG_TAIL_SHOWN - (2 if e.diagnosis else 0)):]),
        ]
        return Update(state=True, progress=True, log_lines=[f"engine gone: {describe_exit(e.exit_code)}"])

    def _resume_hint(self) -> list[str]:
        if self.in_study:
            return ["The study goes on with its next trial; t continues a study that stopped."]
        if not self.last_checkpoint:
            return ["No checkpoint was saved."]
        return [f"Last checkpoint: {self._short(self.last_checkpoint)}", f"Continue with: lora-mlx resume {self.run_dir}"]

    def _short(self, path: str) -> str:
        """A path inside the run directory, shown relative to it."""
        if self.run_dir and path.startswith(self.run_dir.rstrip("/") + "/"):
            return path[len(self.run_dir.rstrip("/")) + 1 :]
        return path


def describe_exit(exit_code: int | None) -> str:
    """An exit code in words; a negative one is the signal that ended the process."""
    if exit_code is None:
        return "exit code unknown"
    if exit_code >= 0:
        return f"exit code {exit_code}"
    try:
        name = signal.Signals(-exit_code).name
    except ValueError:
        return f"exit code {exit_code}"
    why = {
        "SIGKILL": "killed",
        "SIGABRT": "aborted; on Apple silicon this is how running out of memory ends a process",
        "SIGSEGV": "crashed",
        "SIGTERM": "terminated",
    }.get(name, "ended by a signal")
    return f"exit code {exit_code} ({name}: {why})"


def clock(seconds: float | None) -> str:
    """Seconds as M:SS or H:MM:SS; '--:--' when unknown."""
    if seconds is None:
        return "--:--"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60:02d}:{rem % 60:02d}"


STUDY_ACTIVE = ("starting", "running", "stopping")


@dataclass
class StudyView:
    """A study as the dashboard shows it: which trial runs, how many are done, how it ended."""

    study_dir: str
    name: str = ""
    state: str = "starting"  # starting, running, stopping, finished, stopped, failed; watching (no worker here serves it)
    target: int = 0
    done: int = 0
    trial: int | None = None  # the trial running now
    trial_params: dict = field(default_factory=dict)
    detail: str = ""
    summary: P.StudyFinished | None = None

    @property
    def active(self) -> bool:
        return self.state in STUDY_ACTIVE

    def apply(self, e: P.Event) -> list[str]:
        """Fold one study event in; the log lines it makes."""
        if isinstance(e, P.StudyStarted):
            self.name, self.target, self.done = e.study, e.trials_target, e.trials_done
            self.state, self.detail, self.summary = "running", "", None
            return [f"study {e.study}: {e.trials_done} of {e.trials_target} trials done; sampler {e.sampler}, pruner {e.pruner}"]
        if isinstance(e, P.TrialStarted):
            self.trial, self.trial_params = e.number, e.params
            again = f" (re-runs trial {e.retry_of})" if e.retry_of is not None else ""
            return [f"trial {e.number}{again}: {format_params(e.params)}"]
        if isinstance(e, P.TrialFinished):
            self.trial = None
            if e.trials_done is not None:
                self.done = e.trials_done
            if e.state == "complete":
                return [f"trial {e.number} complete: val_loss {e.value:.4f} (best at step {e.best_step})"]
            if e.state == "pruned":
                return [f"trial {e.number} pruned at step {e.pruned_at_step}"]
            return [f"trial {e.number} failed: {e.reason}"]
        if isinstance(e, P.StudyFinished):
            self.summary, self.trial = e, None
            self.state = e.status
            self.detail = {"done": "all trials done", "grid exhausted": "the grid is done", "stopped": "t continues it",
                           "timeout": "timed out; t continues it", "failing": "trials keep failing; see the log"}.get(e.reason, e.reason)
            lines = [f"study {e.study} {self.state}: {e.complete} complete, {e.pruned} pruned, {e.failed} failed"]
            if e.best_number is not None:
                lines.append(f"best: trial {e.best_number}, val_loss {e.best_value:.4f}: {format_params(e.best_params)}")
            return lines
        if isinstance(e, P.RunFailed) and self.trial is None:  # outside any trial: the study itself could not go on
            self.state, self.detail = "failed", e.reason
            return [f"the study could not run: {e.reason}"]
        if isinstance(e, P.EngineGone) and self.active:
            self.state, self.detail = "failed", f"the study process ended unexpectedly ({describe_exit(e.exit_code)}); t continues it"
        return []

    def request_stop(self) -> None:
        self.state, self.detail = "stopping", "the trial saves a checkpoint, then the study stops"


def fold(view: RunView, study: StudyView | None, events: list[P.Event]) -> tuple[RunView, StudyView | None, Update]:
    """Apply events: a study's own events go to the study view, and each new trial gets a fresh run view
    (the memory reading carries over). Returns the views to show from now on and what changed."""
    update, batch = Update(), []
    for event in events:
        studied = isinstance(event, (*P.STUDY_EVENTS, P.RunFailed, P.EngineGone)) and (study is not None or isinstance(event, P.StudyStarted))
        if not studied:
            batch.append(event)
            continue
        update.merge(view.apply(batch))
        batch = []
        study = study or StudyView(view.run_dir)  # attached to a directory not known to be a study
        update.log_lines += study.apply(event)
        if isinstance(event, P.TrialStarted):
            view = RunView(state="starting", run_dir=event.run_dir, detail=f"trial {event.number} of study {study.name}", memory=view.memory, in_study=True)
            update.merge(Update(progress=True, chart=True))
        elif isinstance(event, P.TrialFinished) and view.state == "finished":  # the trial's run said "stopped": say why
            view.stopped_early = False
            view.detail = (f"trial {event.number} pruned at step {event.pruned_at_step}" if event.state == "pruned"
                           else f"trial {event.number} {event.state}" + (f": {event.reason}" if event.reason else ""))
        elif isinstance(event, (P.RunFailed, P.EngineGone)):
            update.merge(view.apply([event]))
        update.state = update.study = True
    update.merge(view.apply(batch))
    return view, study, update
