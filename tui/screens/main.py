"""The dashboard screen: owns the run's state, starts the bridge worker, routes keys to the engine.

Attributes down, messages up: the bridge worker and the widgets post
messages; the handlers here fold them into one `RunView` and hand the parts
that changed to the widgets.
"""

from __future__ import annotations

import queue
from datetime import datetime
from pathlib import Path

import yaml
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Footer, Tab, Tabs
from textual.worker import Worker, WorkerState, get_current_worker

from engine import config as C, protocol as P
from tui import runs
from tui.bridge import AttachJob, StartJob, run_bridge
from tui.layout import MEDIUM_WIDTH, WIDE_WIDTH, visible_panes
from tui.dialogs.help import HelpDialog
from tui.dialogs.quit import QuitDialog
from tui.dialogs.try_it import TryItScreen
from tui.messages import BridgeEnded, CommandSent, EngineEvents, RunLaunched, Telemetry
from tui.state import RunView, Series, Update
from tui.widgets.config_form import ConfigForm
from tui.widgets.leaderboard import Leaderboard
from tui.widgets.loss_chart import LossChart
from tui.widgets.memory_gauge import MemoryGauge
from tui.widgets.status_bar import StatusBar
from tui.widgets.training import TrainingPane

PANES = {"config": "1 Config", "training": "2 Training", "memory": "3 Memory", "runs": "4 Runs"}
RUNS_REFRESH_S = 5.0
TELEMETRY_DRAW_S = 0.5


class RunsRead(Message):
    def __init__(self, rows: list[runs.RunRow]) -> None:
        super().__init__()
        self.rows = rows


class OverlayRead(Message):
    def __init__(self, run_dir: Path, train: Series, val: Series) -> None:
        super().__init__()
        self.run_dir, self.train, self.val = run_dir, train, val


class MainScreen(Screen):
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (MEDIUM_WIDTH, "-medium"), (WIDE_WIDTH, "-wide")]  # sizes and borders
    BINDINGS = [
        Binding("s", "start", "Start", id="start", tooltip="Start a run with the settings in the Config pane"),
        Binding("p", "pause_resume", "Pause", id="pause-resume", tooltip="Pause at the next step (model kept in memory), or resume"),
        Binding("x", "stop", "Stop", id="stop", tooltip="Save a checkpoint, then stop the run"),
        Binding("c", "checkpoint", "Checkpoint", id="checkpoint", tooltip="Save a checkpoint now and keep training"),
        Binding("q", "quit", "Quit", id="quit", tooltip="Quit; with a run active, choose stop and save, detach or cancel"),
        Binding("g", "try_it", "Try it", id="try-it", tooltip="Answer a prompt with the run's adapters, beside the base model"),
        Binding("question_mark", "help", "Help", id="help", key_display="?", tooltip="Show every key"),
        *(
            Binding(str(n), f"show_pane('{pane}')", f"Show {pane}", id=f"pane-{pane}", show=False)
            for n, pane in enumerate(PANES, start=1)
        ),
        Binding("escape", "leave_field", "Leave the field", id="leave-field", show=False, tooltip="Leave a text field (then letter keys work again)"),
    ]

    def __init__(self, preset_path: Path | None, attach: Path | None, engine_command: tuple[str, ...], runs_root: Path) -> None:
        super().__init__()
        self.preset_path, self.attach_dir = preset_path, attach
        self.preset_name = preset_path.stem if preset_path else ""
        self.engine_command, self.runs_root = engine_command, runs_root
        self.view = RunView()
        self.commands: queue.SimpleQueue | None = None  # the live bridge's command queue
        self.overlay_dir: Path | None = None
        self.rows: list[runs.RunRow] = []
        self._runs_shown: tuple | None = None
        self._pending = Update()  # telemetry applied to the view, not drawn yet
        self._pending_timer: Timer | None = None
        self.quit_when_ended = False
        self.pane = "training"

    def compose(self) -> ComposeResult:
        yield StatusBar(id="status")
        yield Tabs(*(Tab(label, id=f"tab-{pane}") for pane, label in PANES.items()), active="tab-training", id="pane-tabs")
        with Horizontal(id="panes"):
            yield ConfigForm(self.preset_path, id="config", classes="pane")
            yield TrainingPane(id="training", classes="pane")
            with Vertical(id="side"):
                yield MemoryGauge(id="memory", classes="pane")
                yield Leaderboard(id="runs", classes="pane")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        for pane, title in (("config", "Configuration"), ("training", "Training"), ("memory", "Memory"), ("runs", "Runs")):
            self.query_one(f"#{pane}").border_title = title
        self._apply_layout()
        self._show(Update(state=True, progress=True, chart=True, memory=True))
        self.refresh_runs()
        self.set_interval(RUNS_REFRESH_S, self.refresh_runs)
        if self.attach_dir is not None:
            self._attach_run(self.attach_dir)

    # -- keys --------------------------------------------------------------------------

    def action_start(self) -> None:
        if self.view.active:
            self.notify(f"A run is already {self.view.state}: stop it with x first.", title="Cannot start", severity="warning", markup=False)
            return
        try:
            cfg = self.query_one(ConfigForm).build_config()
        except C.ConfigError as e:
            self.action_show_pane("config")
            self.notify(str(e), title="Cannot start: fix the configuration", severity="error", timeout=10, markup=False)
            return
        run_dir = runs.new_run_dir(self.runs_root.resolve(), self.preset_name, datetime.now())  # the engine runs in another cwd
        self._begin(run_dir, "launching the engine")
        self.bridge(StartJob(cfg, run_dir, self.engine_command), self.commands)

    def action_pause_resume(self) -> None:
        if self.view.state == "paused":
            self._send(P.Resume())
        elif self.view.state in ("running", "starting"):
            self._send(P.Pause())
        else:
            self._not_now("pause")

    def action_stop(self) -> None:
        if self.view.state in ("running", "paused", "starting"):
            self._send(P.Stop())
        else:
            self._not_now("stop")

    def action_checkpoint(self) -> None:
        if self.view.state in ("running", "paused"):
            self._send(P.SaveCheckpoint())
        else:
            self._not_now("checkpoint")

    def action_quit(self) -> None:
        if not self.view.active or self.commands is None:
            self.app.exit(0)
        elif self.view.state == "stopping":
            self._detach_ui("it is saving a checkpoint and stopping on its own")
        else:
            self.app.push_screen(QuitDialog(self.view.run_name), self._quit_chosen)

    def _quit_chosen(self, choice: str | None) -> None:
        if choice == "stop":
            self.quit_when_ended = True
            self._send(P.Stop())
            self.notify("Saving a checkpoint; the dashboard closes when the run has stopped.", title="Stopping", markup=False)
        elif choice == "detach":
            self._detach_ui("it keeps training")

    def _detach_ui(self, why: str) -> None:
        run_dir = self.view.run_dir
        self.app.exit(0, message=f"Detached from {run_dir}: {why}.\nWatch it again with: lora-mlx attach {run_dir}")

    def action_try_it(self) -> None:
        if not self.view.run_dir:
            self.notify("Start a run (s) or attach to one first: the adapters come from a run.", title="Nothing to try yet", severity="warning", markup=False)
            return
        run_dir = Path(self.view.run_dir)
        prompt = ""
        try:
            prompt = C.from_dict(yaml.safe_load((run_dir / "config.yaml").read_text())).train.sample_prompt
        except (OSError, C.ConfigError, AttributeError):
            pass
        self.app.push_screen(TryItScreen(run_dir, prompt or "hello"))

    def action_help(self) -> None:
        keys = [("anywhere", b.key_display or b.key, b.tooltip or b.description) for b in self.BINDINGS if isinstance(b, Binding)]
        keys += [("config pane", "ctrl+s", "Save the configuration as a new preset"), ("runs pane", "r", "Refresh the runs"),
                 ("runs pane", "enter", "Overlay the run's loss curves on the chart (again: remove)"),
                 ("anywhere", "tab / shift+tab", "Move between fields and panes"), ("anywhere", "ctrl+p", "Command palette")]
        self.app.push_screen(HelpDialog(keys))

    def action_show_pane(self, pane: str) -> None:
        if pane not in PANES:
            return
        self.pane = pane
        self._apply_layout()
        self.query_one(Tabs).active = f"tab-{pane}"
        target = {"config": "#preset-select", "training": "#events", "memory": "#pane-tabs", "runs": "#runs-table"}[pane]
        self.call_after_refresh(lambda: self._focus(target))

    def on_resize(self) -> None:
        self._apply_layout()

    def _apply_layout(self) -> None:
        shown = visible_panes(self.size.width, self.pane)
        for pane in PANES:
            widget = self.query_one(f"#{pane}")
            if widget.display != (pane in shown):
                widget.display = pane in shown
        side = self.query_one("#side")
        if side.display != bool(shown & {"memory", "runs"}):
            side.display = bool(shown & {"memory", "runs"})

    def _focus(self, selector: str) -> None:
        widget = self.query_one(selector)
        (widget if widget.focusable else self.query_one(Tabs)).focus()

    def action_leave_field(self) -> None:
        self.query_one(Tabs).focus()

    @on(Tabs.TabActivated, "#pane-tabs")
    def _tab_activated(self, event: Tabs.TabActivated) -> None:
        pane = (event.tab.id or "").removeprefix("tab-")
        if pane != self.pane:
            self.action_show_pane(pane)

    def _not_now(self, what: str) -> None:
        reason = "no run is active" if self.view.state == "idle" else f"the run is {self.view.state}"
        self.notify(f"Nothing to {what}: {reason}.", severity="warning", markup=False)

    def _send(self, command: P.Command) -> None:
        if self.commands is None:
            self.notify("Not connected to an engine.", severity="error", markup=False)
            return
        self.commands.put(command)
        self._show(self.view.request(command))

    # -- the run -------------------------------------------------------------------------

    def _begin(self, run_dir: Path, detail: str) -> None:
        self.view = RunView(state="starting", run_dir=str(run_dir), detail=detail)
        self.commands = queue.SimpleQueue()
        self.quit_when_ended = False
        self.query_one(TrainingPane).clear_log()
        self._show(Update(state=True, progress=True, chart=True, memory=True))

    def _attach_run(self, run_dir: Path) -> None:
        run_dir = run_dir.resolve()
        if (run_dir / "config.yaml").exists():
            self.query_one(ConfigForm).load(run_dir / "config.yaml", label=f"run {run_dir.name}")
        self._begin(run_dir, "connecting to the engine")
        self.bridge(AttachJob(run_dir), self.commands)

    @work(thread=True, exclusive=True, exit_on_error=False, group="bridge", description="engine bridge")
    def bridge(self, job: StartJob | AttachJob, commands: queue.SimpleQueue) -> None:
        worker = get_current_worker()
        run_bridge(job, commands, self.post_message, lambda: worker.is_cancelled)

    @on(EngineEvents)
    @on(Telemetry)
    def _engine_events(self, message: EngineEvents | Telemetry) -> None:
        was_active = self.view.active
        self._pending.merge(self.view.apply(message.events))
        if isinstance(message, Telemetry):
            # Numbers arrive ~8 times a second; drawing them twice a second is smooth enough and costs less CPU.
            if self._pending_timer is None:
                self._pending_timer = self.set_timer(TELEMETRY_DRAW_S, self._draw_pending)
        else:
            self._draw_pending()  # the run's story (eval, pause, end) shows at once
        if was_active and not self.view.active:
            self.refresh_runs()
            if isinstance(self.app.screen, QuitDialog):
                self.app.screen.dismiss(None)  # its question no longer applies
                self.notify(f"The run is {self.view.state}; nothing to stop or detach from.", markup=False)
            if self.quit_when_ended:
                self.app.exit(0, message=f"{self.view.run_name}: {self.view.state}. {self.view.detail}")

    @on(RunLaunched)
    def _launched(self, message: RunLaunched) -> None:
        self.query_one(TrainingPane).add_log([f"engine process {message.pid} started; run dir {message.run_dir}"])
        self.refresh_runs()

    @on(CommandSent)
    def _command_sent(self, message: CommandSent) -> None:
        if not message.delivered:
            self.notify(f"The engine did not get '{type(message.command).__name__}': it is no longer reachable.", severity="error", markup=False)

    @on(BridgeEnded)
    def _bridge_ended(self, message: BridgeEnded) -> None:
        if str(message.run_dir) == self.view.run_dir:
            self.commands = None

    @on(Worker.StateChanged)
    def _worker_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group == "bridge" and event.state == WorkerState.ERROR:
            self.commands = None
            error = event.worker.error
            self._show(self.view.apply([P.LogMessage("warning", f"lost the connection to the engine: {type(error).__name__}: {error}")]))
            self.notify(f"Lost the connection to the engine: {error}. Try: lora-mlx attach {self.view.run_dir}", severity="error", timeout=10, markup=False)

    @property
    def draw_pending(self) -> bool:
        """Telemetry has been applied to the view but not drawn yet (it is, within TELEMETRY_DRAW_S)."""
        return self._pending_timer is not None

    def _draw_pending(self) -> None:
        if self._pending_timer is not None:
            self._pending_timer.stop()
            self._pending_timer = None
        update, self._pending = self._pending, Update()
        self._show(update)

    def _show(self, update: Update) -> None:
        """Hand the parts of the view that changed to the widgets."""
        training = self.query_one(TrainingPane)
        hint = f"No run yet. Press s to train preset '{self.preset_name}' (settings: Config, key 1)."
        if update.state or update.progress:
            self.query_one(StatusBar).show(self.view, self.preset_name)
            training.show_progress(self.view, hint)
        elif update.memory:
            training.show_numbers(self.view, hint)  # the memory figure on the numbers line
        if update.state:
            training.show_failure(self.view)
            form = self.query_one(ConfigForm)
            if form.locked != self.view.active:
                form.set_locked(self.view.active)
        if update.chart:
            training.show_chart(self.view)
        if update.sample or update.state:
            training.show_sample(self.view)
        if update.memory:
            self.query_one(MemoryGauge).show(self.view.memory)
        training.add_log(update.log_lines)

    @on(ConfigForm.PresetLoaded)
    def _preset_loaded(self, message: ConfigForm.PresetLoaded) -> None:
        self.preset_name = message.preset_name
        self._show(Update(state=True))

    # -- the leaderboard -------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="runs", description="read runs")
    def refresh_runs(self) -> None:
        self.post_message(RunsRead(runs.read_rows(self.runs_root)))

    @on(RunsRead)
    def _runs_read(self, message: RunsRead) -> None:
        current = Path(self.view.run_dir) if self.view.run_dir else None
        shown = (message.rows, current, self.overlay_dir)
        if shown != self._runs_shown:  # rebuilding the table every few seconds for nothing costs frames
            self._runs_shown = shown
            self.query_one(Leaderboard).show(*shown)
        self.rows = message.rows

    @on(Leaderboard.RefreshWanted)
    def _refresh_wanted(self) -> None:
        self.refresh_runs()

    @on(Leaderboard.Chosen)
    def _run_chosen(self, message: Leaderboard.Chosen) -> None:
        if message.run_dir == self.overlay_dir:
            self.overlay_dir = None
            self.query_one(LossChart).set_overlay(None)
            self._runs_read(RunsRead(self.rows))
            self.notify("Overlay removed.", markup=False)
        else:
            self.read_overlay(message.run_dir)

    @work(thread=True, exclusive=True, group="overlay", description="read a run's curves")
    def read_overlay(self, run_dir: Path) -> None:
        self.post_message(OverlayRead(run_dir, *runs.read_curves(run_dir)))

    @on(OverlayRead)
    def _overlay_read(self, message: OverlayRead) -> None:
        if not len(message.train) and not len(message.val):
            self.notify(f"{message.run_dir.name} has no recorded steps yet.", severity="warning", markup=False)
            return
        self.overlay_dir = message.run_dir
        self.query_one(LossChart).set_overlay((message.run_dir.name, message.train, message.val))
        self._runs_read(RunsRead(self.rows))
        self.notify(f"{message.run_dir.name} is overlaid on the training chart (grey).", markup=False)
