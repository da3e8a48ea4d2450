"""The layout: one pane at a time at 80x24, more side by side as the terminal grows."""

import pytest

from tui_support import fake_env, make_app, pilot_test  # noqa: F401 (fake_env is a fixture)

PANES = ("config", "training", "memory", "runs")


def visible(app) -> set[str]:
    return {pane for pane in PANES if app.main.query_one(f"#{pane}").region.area > 0}


@pilot_test
async def test_at_80x24_the_number_keys_show_one_pane_at_a_time(fake_env):
    app = make_app(fake_env)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert visible(app) == {"training"}
        for key, pane in (("1", "config"), ("3", "memory"), ("4", "runs"), ("2", "training")):
            await pilot.press(key)
            await pilot.pause()
            assert visible(app) == {pane}, key
            assert app.main.query_one("#pane-tabs").active == f"tab-{pane}"


@pilot_test
async def test_the_tab_bar_switches_panes_too(fake_env):
    app = make_app(fake_env)
    async with app.run_test(size=(80, 24)) as pilot:
        app.main.query_one("#pane-tabs").focus()
        await pilot.press("right")
        await pilot.pause()
        assert visible(app) == {"memory"}


@pytest.mark.parametrize(
    "size, shown",
    [((120, 40), {"training", "memory", "runs"}), ((200, 60), set(PANES))],
)
@pilot_test
async def test_bigger_terminals_show_more_panes(fake_env, size, shown):
    app = make_app(fake_env)
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        assert visible(app) == shown
        training = app.main.query_one("#training").region
        assert training.width >= size[0] // 3 and training.height >= size[1] - 6


@pilot_test
async def test_at_120_columns_the_config_pane_takes_the_screen(fake_env):
    app = make_app(fake_env)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("1")
        await pilot.pause()
        assert visible(app) == {"config"}


@pilot_test
async def test_the_layout_follows_a_resize(fake_env):
    app = make_app(fake_env)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.resize_terminal(200, 60)
        await pilot.pause()
        assert visible(app) == set(PANES)
        await pilot.resize_terminal(80, 24)
        await pilot.pause()
        assert visible(app) == {"training"}
