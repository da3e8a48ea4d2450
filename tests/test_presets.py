"""Every shipped preset validates, and the real-model presets match their catalog (memory lines included)."""

import pytest

from engine import config, known_models, models, preset_catalog

PRESETS = sorted((config.REPO_ROOT / "presets").glob("*.yaml"))


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_preset_validates(path):
    cfg = config.load(str(path))
    assert cfg.model and cfg.data.path


def test_real_model_presets_are_in_sync_with_the_catalog():
    for path, text in preset_catalog.files().items():
        assert path.read_text() == text, f"regenerate with: python -m engine.preset_catalog ({path.name})"


def test_every_family_has_lora_and_qlora_presets_for_known_models():
    names = {p.stem for p in PRESETS}
    for family in preset_catalog.CATALOG:
        assert {f"{family}-lora", f"{family}-qlora"} <= names
    for path in PRESETS:
        model = config.load(str(path)).model
        assert model.startswith("builtin:") or model in known_models.HUB_IDS


def test_a_7b_4bit_preset_fits_a_16gb_mac_before_any_download():
    cfg = config.load(str(config.REPO_ROOT / "presets" / "mistral-7b-qlora.yaml"))
    from engine import estimate

    guess = estimate.preflight(cfg, *models.describe(cfg.model), preset_catalog.MAC_16GB_WORKING_SET, "16 GB Mac")
    assert guess.verdict == "fits" and 3.5 < guess.weights_gb < 5
