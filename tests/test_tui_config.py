"""The configuration pane: every field from engine.config, inline validation, diffs, saving, locking."""

import yaml
from textual.widgets import Input, Select, Switch

from engine import config as C
from tui.dialogs.save_preset import SavePresetDialog
from tui.widgets.config_form import ConfigForm, editor_id
from tui_support import fake_env, make_app, pilot_test, set_field, shows, told, until  # noqa: F401 (fake_env is a fixture)


def row(app, key):
    return app.main.query_one(f"#row-{editor_id(key)}")


@pilot_test
async def test_every_config_key_has_the_right_editor(fake_env):
    app = make_app(fake_env)
    async with app.run_test(size=(80, 24)):
        for key, f in C.LEAF_FIELDS.items():
            editor = app.main.query_one(f"#{editor_id(key)}")
            kind = f.type if isinstance(f.type, str) else f.type.__name__
            expected = Select if "choices" in f.metadata else Switch if kind == "bool" else Input
            assert isinstance(editor, expected), key
        assert app.main.query_one(f"#{editor_id('train.optimizer')}").value == "adam"


@pilot_test
async def test_a_bad_value_shows_the_engines_message_under_the_field_and_blocks_start(fake_env):
    app = make_app(fake_env)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("1")
        set_field(app, "train.iters", "0")
        await pilot.pause()
        assert row(app, "train.iters").has_class("-invalid")
        app.main.query_one(ConfigForm).scroll_to_widget(row(app, "train.iters"), animate=False, top=True)
        await pilot.pause()
        await shows(pilot, lambda: row(app, "train.iters"), "train.iters: must be an integer >= 1, got 0")
        await shows(pilot, lambda: app.main.query_one("#config-summary"), "1 to fix")
        await pilot.press("escape", "s")
        assert app.main.view.state == "idle"
        await told(pilot, "train.iters: must be an integer >= 1, got 0")
        assert app.main.pane == "config"


@pilot_test
async def test_changes_are_marked_and_the_run_uses_them(fake_env):
    app = make_app(fake_env)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("1")
        set_field(app, "train.iters", "40")
        set_field(app, "train.steps_per_report", "5")
        await pilot.pause()
        assert row(app, "train.iters").has_class("-changed")
        app.main.query_one(ConfigForm).scroll_to_widget(row(app, "train.iters"), animate=False, top=True)
        await pilot.pause()
        await shows(pilot, lambda: row(app, "train.iters").query_one(".field-mark"), "was 1000")
        await shows(pilot, lambda: app.main.query_one("#config-summary"), "2 changed (train.iters, train.steps_per_report)")
        await pilot.press("escape", "s")
        await until(pilot, lambda: app.main.view.state == "finished", what="the 40-step run to finish")
        assert app.main.view.total_steps == 40 and app.main.view.train.steps[:2] == [5, 10]


@pilot_test
async def test_the_switch_and_select_editors_validate_too(fake_env):
    app = make_app(fake_env)
    async with app.run_test(size=(80, 24)) as pilot:
        app.main.query_one(f"#{editor_id('train.mask_prompt')}").value = True
        app.main.query_one(f"#{editor_id('train.lr_schedule')}").value = "cosine"
        await pilot.pause()
        numeric = [k for k, f in C.LEAF_FIELDS.items() if all(isinstance(c, int) for c in f.metadata.get("choices", ["x"]))]
        for key in numeric:  # choices that are numbers (quantization bits) keep their type
            app.main.query_one(f"#{editor_id(key)}").value = C.LEAF_FIELDS[key].metadata["choices"][-1]
        await pilot.pause()
        form = app.main.query_one(ConfigForm)
        assert form.values["train.mask_prompt"] is True and form.values["train.lr_schedule"] == "cosine"
        assert all(form.values[k] == C.LEAF_FIELDS[k].metadata["choices"][-1] for k in numeric) and not form.errors
        cfg = form.build_config()
        assert cfg.train.mask_prompt and cfg.train.lr_schedule == "cosine"


@pilot_test
async def test_the_form_is_locked_while_a_run_is_active(fake_env, monkeypatch):
    monkeypatch.setenv("FAKE_ENGINE_STEP_S", "0.05")
    app = make_app(fake_env)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("s")
        await until(pilot, lambda: app.main.view.state == "running", what="running")
        await pilot.press("1")
        editors = app.main.query(".field-line > Input, .field-line > Switch, .field-line > Select, #preset-select")
        assert len(editors) == len(C.LEAF_FIELDS) + 1
        await until(pilot, lambda: all(e.disabled for e in editors), what="every editor locked")
        await shows(pilot, lambda: app.main.query_one("#config-summary"), "Locked while a run is active.")
        await pilot.press("x")
        await until(pilot, lambda: app.main.view.state == "finished", what="finished")
        await until(pilot, lambda: not any(e.disabled for e in editors), what="every editor unlocked")


@pilot_test
async def test_save_as_preset_writes_a_loadable_preset_and_selects_it(fake_env, tmp_path):
    app = make_app(fake_env)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("1")
        set_field(app, "lora.rank", "16")
        await pilot.pause()
        app.main.query_one("#preset-select").focus()
        await pilot.press("ctrl+s")
        assert isinstance(app.screen, SavePresetDialog)
        await pilot.press(*"demo", "enter")
        assert isinstance(app.screen, SavePresetDialog)  # the name is taken
        await pilot.pause()
        await shows(pilot, lambda: app.screen.query_one("#name-error"), f"a preset named 'demo' already exists in {C.preset_dirs()[0]}")
        await pilot.press(*"-r16", "enter")
        await until(pilot, lambda: app.screen is app.main, what="the dialog to close")
        path = tmp_path / "user-presets" / "demo-r16.yaml"
        text = path.read_text()
        assert "  rank: 16  # Rank of the LoRA/DoRA update matrices." in text.splitlines()
        assert yaml.safe_load(text)["lora"] == {"rank": 16}
        assert C.load(str(path)).lora.rank == 16
        form = app.main.query_one(ConfigForm)
        assert form.preset.path == path and app.main.query_one("#preset-select").value == str(path)
        assert "demo-r16 (yours)" in [str(label) for label, _ in app.main.query_one("#preset-select")._options]


@pilot_test
async def test_a_preset_with_an_unknown_key_says_which_and_refuses_to_start(fake_env, tmp_path):
    preset = tmp_path / "typo.yaml"
    preset.write_text("model: builtin:tiny\ndata: /nowhere\ntrain:\n  learning_rat: 1e-4\n")
    app = make_app(fake_env, preset=preset)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("1")
        await pilot.pause()
        message = f"{preset}:4: train.learning_rat: unknown key (did you mean 'train.learning_rate'?)"
        assert message in app.main.query_one(ConfigForm).preset.problems
        await shows(pilot, lambda: app.main.query_one("#config-problems"), "unknown key (did you mean 'train.learning_rate'?)")
        await pilot.press("escape", "s")
        await told(pilot, message)
        assert app.main.view.state == "idle"


@pilot_test
async def test_picking_another_preset_loads_it(fake_env, tmp_path):
    user = tmp_path / "user-presets"
    user.mkdir()
    (user / "long.yaml").write_text(f"model: builtin:tiny\ndata: {C.REPO_ROOT / 'presets/data/demo'}\ntrain:\n  iters: 77\n")
    app = make_app(fake_env)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("1")
        app.main.query_one("#preset-select").value = str(user / "long.yaml")
        await pilot.pause()
        assert app.main.query_one(f"#{editor_id('train.iters')}").value == "77"
        assert app.main.preset_name == "long"
        assert not row(app, "train.iters").has_class("-changed")


@pilot_test
async def test_keys_arriving_in_one_burst_edit_a_field_in_the_order_typed(fake_env):
    """Over a slow SSH link several keys come in one packet: backspace, backspace, 4 must leave 4."""
    from textual import events

    app = make_app(fake_env)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("1")
        field = app.main.query_one(f"#{editor_id('train.iters')}", Input)
        field.value = "12"
        field.focus()
        field.cursor_position = 2
        await pilot.pause()
        for key, character in (("backspace", "\x7f"), ("backspace", "\x7f"), ("4", "4"), ("left", None), ("7", "7")):
            app.post_message(events.Key(key, character))  # all queued before any is handled
        await until(pilot, lambda: field.value == "74", what=f"'74' in the field (it holds {field.value!r})")
