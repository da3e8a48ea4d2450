"""The dashboard screen: owns the run's state, starts the bridge worker, routes keys to the engine.

Attributes down, messages up: the bridge worker and the widgets post
messages; the handlers here fold them into one `RunView` and hand the parts
that changed to the widgets.
"""

from __future__ import annotations

import queue
from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Footer, Tab, Tabs
from textual.worker import Worker, WorkerState, get_current_worker

from engine import client as engine_client, config as C, protocol as P, study_plan
from tui import runs, trials
from tui.bridge import AttachJob, StartJob, StudyJob, run_bridge
from tui.layout import MEDIUM_WIDTH, WIDE_WIDTH, visible_panes
from tui.dialogs.help import PANE_KEYS, HelpDialog
from tui.dialogs.quit import QuitDialog
from tui.dialogs.study import StudyDialog, settings_for
from tui.dialogs.try_it import TryItScreen
from tui.messages import BridgeEnded, CommandSent, EngineEvents, RunLaunched, Telemetry
from tui.state import RunView, StudyView, Update, fold
from tui.widgets.boards import Boards
from tui.widgets.config_form import ConfigForm
from tui.widgets.trial_board import TrialBoard
from tui.widgets.loss_chart import LossChart
from tui.widgets.memory_gauge import MemoryGauge
from tui.widgets.status_bar import StatusBar
from tui.widgets.training import TrainingPane

PANES = {"config": "1 Config", "training": "2 Training", "memory": "3 Memory", "runs": "4 Leaderboard"}
TELEMETRY_DRAW_S = 0.5


class MainScreen(Screen):
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (MEDIUM_WIDTH, "-medium"), (WIDE_WIDTH, "-wide")]  # sizes and borders
    BINDINGS = [
        Binding("s", "start", "Start", id="start", tooltip="Start a run with the settings in the Config pane"),
        Binding("p", "pause_resume", "Pause", id="pause-resume", tooltip="Pause at the next step (model kept in memory), or resume"),
        Binding("x", "stop", "Stop", id="stop", tooltip="Save a checkpoint, then stop the run"),
        Binding("c", "checkpoint", "Checkpoint", id="checkpoint", tooltip="Save a checkpoint now and keep training"),
        Binding("q", "quit", "Quit", id="quit", tooltip="Quit; with a run active, choose stop and save, detach or cancel"),
        Binding("g", "try_it", "Try it", id="try-it", tooltip="Answer a prompt with the run's adapters, beside the base model"),
        Binding("t", "study", "Study", id="study", tooltip="Search hyperparameters for this preset: start or continue its study"),
        Binding("b", "try_best", "Best", id="try-best", show=False, tooltip="Try the best trial's adapters (from the study's leaderboard)"),
        Binding("l", "toggle_board", "Runs/trials", id="toggle-board", show=False, tooltip="Switch the leaderboard between runs and the study's trials"),
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
        self.study: StudyView | None = None  # the study this dashboard runs or watches
        self.commands: queue.SimpleQueue | None = None  # the live bridge's command queue
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
                yield Boards(self.runs_root, id="runs", classes="pane")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        for pane, title in (("config", "Configuration"), ("training", "Training"), ("memory", "Memory")):
            self.query_one(f"#{pane}").border_title = title
        self._apply_layout()
        self._show(Update(state=True, progress=True, chart=True, memory=True))
        if self.attach_dir is not None:
            self._attach_run(self.attach_dir)
        elif self.preset_name:
            self._follow_study(trials.study_dir_for(self.preset_name), switch=False)

    @property
    def studying(self) -> bool:
        return self.study is not None and self.study.active

    @property
    def busy(self) -> bool:
        """A run or a study is active (the form is locked, s and t are refused, quitting asks)."""
        return self.view.active or self.studying

    # -- keys --------------------------------------------------------------------------

    def action_start(self) -> None:
        if self.busy:
            what = "The study is running" if self.studying else f"A run is already {self.view.state}"
            self.notify(f"{what}: stop it with x first.", title="Cannot start", severity="warning", markup=False)
            return
        try:
            cfg = self.query_one(ConfigForm).build_config()
        except C.ConfigError as e:
            self.action_show_pane("config")
            self.notify(str(e), title="Cannot start: fix the configuration", severity="error", timeout=10, markup=False)
            return
        try:
            run_dir = engine_client.new_run_dir(self.preset_name, self.runs_root.resolve())  # the engine runs in another cwd
        except OSError as e:
            self.notify(f"Cannot create the run's folder: {e}", title="Cannot start", severity="error", timeout=10, markup=False)
            return
        self.study = None
        self._begin(run_dir, "launching the engine")
        self.bridge(StartJob(cfg, run_dir, self.engine_command), self.commands)

    def action_study(self) -> None:
        """t: start or continue the study of the preset in the form (attach if its process runs)."""
        if self.busy:
            self.notify("A run or study is active: stop it with x first (or detach with q).", title="Cannot start a study", severity="warning", markup=False)
            return
        try:
            cfg, space, preset = self.query_one(ConfigForm).study_source()
        except C.ConfigError as e:
            self.action_show_pane("config")
            self.notify(str(e), title="Cannot start a study: fix the configuration", severity="error", timeout=10, markup=False)
            return
        name = trials.study_name(self.preset_name)
        settings = settings_for(name, trials.studies_root().resolve())
        if engine_client.pid_alive(engine_client.read_record(settings.study_dir).get("pid")):
            self.notify(f"Study {name} is already running; showing it.", markup=False)
            self._attach_run(settings.study_dir)
            return

        def chosen(result: study_plan.StudySettings | None) -> None:
            if result is None:
                return
            try:
                study_plan.write_plan(cfg, space, result, preset)
            except OSError as e:
                self.notify(f"Cannot write the study plan in {result.study_dir}: {e}", severity="error", timeout=10, markup=False)
                return
            self.study = StudyView(str(result.study_dir), name=result.name, target=result.trials)
            self._begin(result.study_dir, "launching the study")
            self._follow_study(result.study_dir, target=result.trials)
            self.bridge(StudyJob(result.study_dir, self.engine_command), self.commands)

        self.app.push_screen(StudyDialog(settings, cfg, space, preset["path"] or "the form"), chosen)

    def action_pause_resume(self) -> None:
        if self.view.state == "paused":
            self._send(P.Resume())
        elif self.view.state in ("running", "starting"):
            self._send(P.Pause())
        else:
            self._not_now("pause")

    def action_stop(self) -> None:
        if self.view.state in ("running", "paused", "starting") or self.studying:
            if self.studying:
                self.study.request_stop()
            self._send(P.Stop())
        else:
            self._not_now("stop")

    def action_checkpoint(self) -> None:
        if self.view.state in ("running", "paused"):
            self._send(P.SaveCheckpoint())
        else:
            self._not_now("checkpoint")

    def action_quit(self) -> None:
        if not self.busy or self.commands is None:
            self.app.exit(0)
        elif (self.study.state if self.studying else self.view.state) == "stopping":
            self._detach_ui("it is saving a checkpoint and stopping on its own")
        elif self.studying:
            trial = f" (trial {self.study.trial})" if self.study.trial is not None else ""
            self.app.push_screen(QuitDialog(f"study {self.study.name} is still running{trial}", QuitDialog.STUDY_TEXT), self._quit_chosen)
        else:
            self.app.push_screen(QuitDialog(f"{self.view.run_name} is still training"), self._quit_chosen)

    def _quit_chosen(self, choice: str | None) -> None:
        if choice == "stop":
            self.quit_when_ended = True
            self.action_stop()
            self.notify("Saving a checkpoint; the dashboard closes when it has stopped.", title="Stopping", markup=False)
        elif choice == "detach":
            self._detach_ui("it keeps running" if self.studying else "it keeps training")

    def _detach_ui(self, why: str) -> None:
        where = self.study.study_dir if self.studying else self.view.run_dir
        self.app.exit(0, message=f"Detached from {where}: {why}.\nWatch it again with: lora-mlx attach {where}")

    def action_try_it(self) -> None:
        if not self.view.run_dir or engine_client.is_study(Path(self.view.run_dir)):
            self.notify("Start a run (s) or attach to one first: the adapters come from a run.", title="Nothing to try yet", severity="warning", markup=False)
            return
        self._try(Path(self.view.run_dir), "latest")

    def action_try_best(self) -> None:
        boards = self.query_one(Boards)
        best = boards.snapshot.best if boards.snapshot else None
        if best is None or not best.run_dir:
            self.notify("No complete trial yet: start a study with t.", title="No best trial", severity="warning", markup=False)
            return
        self._try(Path(best.run_dir), "best")

    @on(TrialBoard.TryWanted)
    def _try_trial(self, message: TrialBoard.TryWanted) -> None:
        self._try(message.run_dir, "best")

    def _try(self, run_dir: Path, which: str) -> None:
        self.app.push_screen(TryItScreen(run_dir, runs.sample_prompt(run_dir) or "hello", which))

    @on(TrialBoard.PromoteWanted)
    def _promote_wanted(self) -> None:
        snapshot = self.query_one(Boards).snapshot
        if snapshot is None or snapshot.best is None:
            self.notify("No complete trial yet: nothing to promote.", severity="warning", markup=False)
        else:
            self.promote(snapshot.study_dir)

    @work(thread=True, exclusive=True, group="promote", exit_on_error=False)
    def promote(self, study_dir: Path) -> None:
        try:
            path = trials.promote_best(study_dir)
        except C.ConfigError as e:
            self.app.call_from_thread(self.notify, str(e), title="Not promoted", severity="error", markup=False)
            return
        self.app.call_from_thread(self.query_one(ConfigForm).refresh_presets)
        self.app.call_from_thread(self.notify, f"Wrote {path}: pick it in the Config pane, or lora-mlx train {path}",
                                  title="Best trial promoted", timeout=10, markup=False)

    def action_toggle_board(self) -> None:
        shown = self.query_one(Boards).toggle()
        if self.pane != "runs" and "runs" not in visible_panes(self.size.width, self.pane):
            self.action_show_pane("runs")
        self.notify("Showing the study's trials." if shown == "trial-board" else "Showing the runs.", markup=False)

    def action_help(self) -> None:
        keys = [("anywhere", b.key_display or b.key, b.tooltip or b.description) for b in self.BINDINGS if isinstance(b, Binding)]
        self.app.push_screen(HelpDialog(keys + PANE_KEYS))

    def action_show_pane(self, pane: str) -> None:
        if pane not in PANES:
            return
        self.pane = pane
        self._apply_layout()
        self.query_one(Tabs).active = f"tab-{pane}"
        target = {"config": "#preset-select", "training": "#events", "memory": "#pane-tabs", "runs": self.query_one(Boards).table_selector}[pane]
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
        self.query_one(Boards).set_current(run_dir)
        self._show(Update(state=True, progress=True, chart=True, memory=True))

    def _attach_run(self, run_dir: Path) -> None:
        run_dir = run_dir.resolve()
        if (run_dir / "config.yaml").exists():
            self.query_one(ConfigForm).load(run_dir / "config.yaml", label=f"{'study' if engine_client.is_study(run_dir) else 'run'} {run_dir.name}")
        self.study = StudyView(str(run_dir), name=run_dir.name) if engine_client.is_study(run_dir) else None
        self._begin(run_dir, "connecting to the engine")
        if self.study is not None:
            self._follow_study(run_dir)
        self.bridge(AttachJob(run_dir), self.commands)

    def _follow_study(self, study_dir: Path, target: int | None = None, switch: bool = True) -> None:
        boards = self.query_one(Boards)
        boards.show_study(study_dir, target, switch=switch)
        boards.study_live = self.study is not None and self.study.active

    @work(thread=True, exclusive=True, exit_on_error=False, group="bridge", description="engine bridge")
    def bridge(self, job: StartJob | StudyJob | AttachJob, commands: queue.SimpleQueue) -> None:
        worker = get_current_worker()
        run_bridge(job, commands, self.post_message, lambda: worker.is_cancelled)

    @on(EngineEvents)
    @on(Telemetry)
    def _engine_events(self, message: EngineEvents | Telemetry) -> None:
        was_busy, trial = self.busy, self.view
        self.view, self.study, update = fold(self.view, self.study, message.events)
        self._pending.merge(update)
        if self.view is not trial:  # a new trial: the boards mark it as the one running
            self.query_one(Boards).set_current(Path(self.view.run_dir))
        if update.study:
            self._follow_study(Path(self.study.study_dir), self.study.target or None, switch=False)
        if isinstance(message, Telemetry):
            # Numbers arrive ~8 times a second; drawing them twice a second is smooth enough and costs less CPU.
            if self._pending_timer is None:
                self._pending_timer = self.set_timer(TELEMETRY_DRAW_S, self._draw_pending)
        else:
            self._draw_pending()  # the run's story (eval, pause, end) shows at once
        if was_busy and not self.busy:
            self.query_one(Boards).refresh_runs()
            self.query_one(Boards).study_live = False
            if isinstance(self.app.screen, QuitDialog):
                self.app.screen.dismiss(None)  # its question no longer applies
                what = f"study is {self.study.state}" if self.study is not None else f"run is {self.view.state}"
                self.notify(f"The {what}; nothing to stop or detach from.", markup=False)
            if self.quit_when_ended:
                if self.study is not None:
                    self.app.exit(0, message=f"Study {self.study.name} {self.study.state} ({self.study.done} of {self.study.target} trials done).\n"
                                             "To continue it, open the dashboard on the same preset and press t.")
                else:
                    self.app.exit(0, message=f"{self.view.run_name}: {self.view.state}. {self.view.detail}")

    @on(RunLaunched)
    def _launched(self, message: RunLaunched) -> None:
        self.query_one(TrainingPane).add_log([f"engine process {message.pid} started in {message.run_dir}"])
        self.query_one(Boards).refresh_runs()

    @on(CommandSent)
    def _command_sent(self, message: CommandSent) -> None:
        if not message.delivered:
            self._show(self.view.undelivered())
            self.notify(f"The engine did not get '{type(message.command).__name__}': it is not reachable.", severity="error", markup=False)

    @on(BridgeEnded)
    def _bridge_ended(self, message: BridgeEnded) -> None:
        if str(message.run_dir) in (self.view.run_dir, self.study.study_dir if self.study else None):
            self.commands = None
        if self.study is not None and self.study.active and str(message.run_dir) == self.study.study_dir:
            external = "pid" not in engine_client.read_record(Path(self.study.study_dir))  # only workers on other machines
            self.study.state = "watching" if external else "stopped"
            self.study.detail = "its trials as stored (no worker here serves it)" if external else "no study process runs; t continues it"
            self.query_one(Boards).study_live = external
            if self.view.state == "starting":  # it was connecting: there is no trial to show
                self.view = RunView()
            self._show(Update(state=True, progress=True, chart=True))

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
        hint = f"No run yet: s trains '{self.preset_name}', t tunes it; settings: key 1."
        if update.state or update.progress:
            self.query_one(StatusBar).show(self.view, self.preset_name, self.study)
            training.show_progress(self.view, hint)
        elif update.memory:
            training.show_numbers(self.view, hint)  # the memory figure on the numbers line
        if update.state:
            training.show_failure(self.view)
            form = self.query_one(ConfigForm)
            if form.locked != self.busy:
                form.set_locked(self.busy)
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
        if not self.busy and not message.preset_name.startswith(("run ", "study ")):
            self._follow_study(trials.study_dir_for(self.preset_name), switch=False)

    @on(Boards.OverlayChanged)
    def _overlay_changed(self, message: Boards.OverlayChanged) -> None:
        chart = self.query_one(LossChart)
        if message.name is None:
            chart.set_overlay(None)
            self.notify("Overlay removed.", markup=False)
        else:
            chart.set_overlay((message.name, message.train, message.val))
            self.notify(f"{message.name} is overlaid on the training chart (grey).", markup=False)
