"""The configuration pane: a preset picker and one editor per config key, generated from engine.config.

Each edit is checked with the engine's own validator as it is typed; the
message under a field is the one `lora-mlx train --set` would print. Fields
that differ from the preset are marked, and the form can be saved as a new
preset. The screen locks it while a run is active.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.text import Text
from textual import events, on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widget import Widget
from textual.widgets import Input, Label, Select, Static, Switch

from engine import config as C, search
from tui import presets
from tui.dialogs.save_preset import SavePresetDialog
from tui.widgets.ordered_input import OrderedInput

LOCK_BATCH = 6  # editors (un)locked per frame

SECTION_TITLES = {"": "Model", "data": "Data", "lora": "Adapters (LoRA / DoRA)", "train": "Training", "memory": "Memory"}


def section_order(key: str) -> tuple[int, int]:
    """Top-level keys first, then the sections in the order the config defines them."""
    sections = list(dict.fromkeys(k.rpartition(".")[0] for k in C.LEAF_FIELDS))
    head = key.rpartition(".")[0]
    return (0 if not head else 1 + sections.index(head), list(C.LEAF_FIELDS).index(key))


def editor_id(key: str) -> str:
    return "f-" + key.replace(".", "--").replace("_", "-")


def make_editor(key: str, value: Any) -> Widget:
    """Select for choices, Switch for booleans, Input for everything else."""
    f = C.LEAF_FIELDS[key]
    kind = f.type if isinstance(f.type, str) else f.type.__name__
    if "choices" in f.metadata:
        return Select([(str(c), c) for c in f.metadata["choices"]], value=value, allow_blank=False, compact=True, id=editor_id(key))
    if kind == "bool":
        return Switch(value=bool(value), id=editor_id(key))
    placeholder = {"int": "an integer", "float": "a number", "list": "[a, b]"}.get(kind, "text")
    return OrderedInput(presets.format_value(value), placeholder=placeholder, compact=True, id=editor_id(key))


class ConfigForm(VerticalScroll):
    BINDINGS = [Binding("ctrl+s", "save_preset", "Save as preset", id="save-preset")]

    class EstimateReady(Message):
        """The pre-flight memory estimate for the settings in the form (computed in a thread)."""

        def __init__(self, text: Text) -> None:
            super().__init__()
            self.text = text

    class PresetLoaded(Message):
        """The form now starts from another preset (or a run's config)."""

        def __init__(self, preset_name: str) -> None:
            super().__init__()
            self.preset_name = preset_name

    def __init__(self, preset_path: Path | None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.preset = presets.read_preset(preset_path)
        self.values: dict[str, Any] = dict(self.preset.values)
        self.errors: dict[str, str] = dict(self.preset.errors)
        self.locked = False
        self._keys = {editor_id(k): k for k in C.LEAF_FIELDS}

    def compose(self) -> ComposeResult:
        yield Static(id="config-summary")
        yield Static("memory estimate: ...", id="config-estimate")
        yield Static(id="field-help")
        options, current = presets.preset_options(self.preset.path)
        with Horizontal(id="preset-row"):
            yield Label("preset", classes="field-label")
            yield Select(options, value=current or Select.NULL, prompt="(none)", compact=True, id="preset-select")
        yield Static(id="config-problems")
        section = None
        for key in sorted(C.LEAF_FIELDS, key=section_order):
            head = key.rpartition(".")[0]
            if head != section:
                yield Static(SECTION_TITLES.get(head, head.capitalize()), classes="section")
            section = head
            with Vertical(classes="field", id=f"row-{editor_id(key)}"):
                with Horizontal(classes="field-line"):
                    yield Label(key, classes="field-label")
                    yield make_editor(key, self.values[key])
                    yield Static("", classes="field-mark")
                yield Static("", classes="field-error")

    def on_mount(self) -> None:
        self._refresh_all()

    def on_descendant_focus(self, event: events.DescendantFocus) -> None:
        self._show_help(self._keys.get(event.widget.id or ""))

    def _show_help(self, key: str | None) -> None:
        """The focused field's doc (one line for all fields: a line per field would double the widgets)."""
        help_line = self.query_one("#field-help", Static)
        if key is None:
            help_line.update(Text("tab: next field  ctrl+s: save as preset  escape: leave the form", style="dim"))
        else:
            help_line.update(Text.assemble((key, "bold"), ": ", C.LEAF_FIELDS[key].metadata["doc"]))

    # -- reading what the user typed ------------------------------------------------

    @on(Input.Changed)
    def _input_changed(self, event: Input.Changed) -> None:
        self._edited(event, event.value)

    @on(Switch.Changed)
    def _switch_changed(self, event: Switch.Changed) -> None:
        self._edited(event, "true" if event.value else "false")

    @on(Select.Changed)
    def _select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "preset-select":
            event.stop()
            if event.value is not Select.NULL and (self.preset.path is None or str(self.preset.path.resolve()) != event.value):
                self.load(Path(str(event.value)))
            return
        self._edited(event, str(event.value))

    def _edited(self, event: Message, text: str) -> None:
        event.stop()
        key = self._keys.get(getattr(event.control, "id", "") or "")
        if key is None:
            return
        try:
            self.values[key] = presets.parse_value(key, text)
            self.errors.pop(key, None)
        except C.ConfigError as e:
            self.values[key] = text
            self.errors[key] = str(e)
        self._refresh_field(key)
        self._refresh_summary()
        if event.control.has_focus:
            self._show_help(key)  # the error, if any, is under the field; the doc stays here

    # -- what the screen asks of the form ---------------------------------------------

    def load(self, path: Path, label: str | None = None) -> None:
        """Start over from a preset (or a run's config.yaml); edits are dropped."""
        self.preset = presets.read_preset(path)
        self.values = dict(self.preset.values)
        self.errors = dict(self.preset.errors)
        with self.prevent(Input.Changed, Switch.Changed, Select.Changed):
            for key, value in self.values.items():
                editor = self.query_one(f"#{editor_id(key)}")
                if isinstance(editor, Input):
                    editor.value = presets.format_value(value)
                elif isinstance(editor, Switch):
                    editor.value = bool(value)
                elif isinstance(editor, Select):
                    editor.value = value
            if label is not None:
                self.query_one("#preset-select", Select).clear()
        self._refresh_all()
        self.post_message(self.PresetLoaded(label or self.preset.name))

    def set_locked(self, locked: bool) -> None:
        """Editing is locked while a run is active (nothing here can change a running engine)."""
        self.locked = locked
        self._refresh_summary()
        editors = list(self.query(".field-line > Input, .field-line > Switch, .field-line > Select, #preset-select"))

        # Restyling ~35 editors at once blocks the event loop for ~0.1 s: do a few per frame.
        def apply(start: int) -> None:
            if self.locked != locked:
                return  # a newer lock or unlock took over
            for editor in editors[start : start + LOCK_BATCH]:
                editor.disabled = locked
            if start + LOCK_BATCH < len(editors):
                self.call_after_refresh(apply, start + LOCK_BATCH)

        apply(0)

    def build_config(self) -> C.Config:
        """The form as a validated Config; ConfigError names every field that is wrong."""
        problems = list(self.preset.problems) + [self.errors[k] for k in C.LEAF_FIELDS if k in self.errors]
        if problems:
            raise C.ConfigError("\n".join(problems))
        return presets.build_config(self.preset, self.values)

    def study_source(self) -> tuple[C.Config, search.SearchSpace, dict]:
        """What a study from this form searches: the config, the preset's search: section (or the
        default space), and {"path", "keys"} for promoting its best trial to a preset later."""
        cfg = self.build_config()
        path = self.preset.path if self.preset.path and self.preset.path.name != "config.yaml" else None
        entry = C.read_yaml(path).get("search") if path else None
        space = search.parse(entry, str(path), cfg)
        keys = sorted(self.preset.explicit | set(presets.changed_keys(self.preset, self.values)))
        return cfg, space, {"path": str(path) if path else "", "keys": keys}

    def refresh_presets(self) -> None:
        """List the preset folders again (a preset was written)."""
        select = self.query_one("#preset-select", Select)
        shown = select.value is not Select.NULL  # a run's config.yaml loaded into the form is no preset to pick
        options, current = presets.preset_options(self.preset.path if shown else None)
        with self.prevent(Select.Changed):
            select.set_options(options)
            if current is not None:
                select.value = current

    def action_save_preset(self) -> None:
        try:
            cfg = self.build_config()
        except C.ConfigError as e:
            self.notify(str(e), title="Fix these before saving", severity="error", timeout=8, markup=False)
            return
        changed = presets.changed_keys(self.preset, self.values)

        def save(name: str | None) -> None:
            if not name:
                return
            try:
                path = presets.save_preset(name, presets.preset_text(cfg, self.preset, changed))
            except (OSError, C.ConfigError) as e:
                self.notify(str(e), title="Preset not saved", severity="error", timeout=8, markup=False)
                return
            self.refresh_presets()
            self.load(path)
            self.query_one("#preset-select", Select).value = str(path)
            self.notify(f"Saved {path}", title="Preset saved", markup=False)

        self.app.push_screen(SavePresetDialog(), save)

    # -- drawing ---------------------------------------------------------------------

    def _refresh_all(self) -> None:
        self._show_help(None)
        for key in C.LEAF_FIELDS:
            self._refresh_field(key)
        problems = self.query_one("#config-problems", Static)
        problems.update(Text("\n".join(self.preset.problems), style="red"))
        problems.display = bool(self.preset.problems)
        self._refresh_summary()

    def _refresh_field(self, key: str) -> None:
        row = self.query_one(f"#row-{editor_id(key)}")
        error = self.errors.get(key, "")
        row.set_class(bool(error), "-invalid")
        row.query_one(".field-error", Static).update(error)
        changed = key not in self.errors and self.values.get(key) != self.preset.values.get(key)
        row.set_class(changed, "-changed")
        mark = f"was {presets.format_value(self.preset.values.get(key))}" if changed else ""
        row.query_one(".field-mark", Static).update(mark)

    def _refresh_summary(self) -> None:
        changed = presets.changed_keys(self.preset, self.values)
        text = Text()
        if self.locked:
            text.append("Locked while a run is active. ", style="bold yellow")
        text.append(f"Based on {self.preset.name}: ")
        if changed:
            text.append(f"{len(changed)} changed ({', '.join(changed)})", style="bold")
        else:
            text.append("no changes", style="dim")
        if self.errors or self.preset.problems:
            text.append(f"  {len(self.errors) + len(self.preset.problems)} to fix", style="bold red")
        text.append("  ctrl+s: save as preset", style="dim")
        self.query_one("#config-summary", Static).update(text)
        self._estimate()

    def _estimate(self) -> None:
        try:
            cfg = self.build_config()
        except C.ConfigError:
            self.query_one("#config-estimate", Static).update(Text("memory estimate: fix the settings first", style="dim"))
            return
        self._estimate_in_thread(cfg)

    @work(thread=True, exclusive=True, group="estimate", exit_on_error=False)
    def _estimate_in_thread(self, cfg: C.Config) -> None:
        """Reading a model's config can mean asking the hub: never on the event loop."""
        from engine import estimate, models

        try:
            guess = estimate.preflight(cfg, *models.describe(cfg.model), *estimate.budget(cfg))
        except Exception as e:  # ModelError (offline, no such folder) and anything the hub says
            self.post_message(self.EstimateReady(Text(f"memory estimate unavailable: {e}", style="dim")))
            return
        style = {"fits": "green", "tight": "yellow"}.get(guess.verdict, "bold red")
        text = Text()
        head, *rest = guess.lines()
        text.append(head, style=style)
        for line in rest:
            text.append("\n" + line, style="dim" if line.startswith("  weights") else "")
        self.post_message(self.EstimateReady(text))

    @on(EstimateReady)
    def _show_estimate(self, message: EstimateReady) -> None:
        self.query_one("#config-estimate", Static).update(message.text)
