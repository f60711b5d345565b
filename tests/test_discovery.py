"""Model discovery lists what is in the model folders and resolves names only inside them."""

import os

import factories
import pytest

from ella_ext import ModelPathError
from ella_ext.discovery import (
    ModelRoots,
    list_ella_models,
    list_t5_encoders,
    resolve_ella_model,
    resolve_t5_encoder,
)
from ella_ext.tsc import TSCConfig

CFG = TSCConfig(time_channel=8, time_embed_dim=8, width=8, layers=1, heads=2, num_latents=2, input_dim=8)


@pytest.fixture()
def models(tmp_path):
    base = tmp_path / "models"
    roots = ModelRoots.under(base)
    ella = base / "ELLA"
    factories.write_tsc(ella / "ella-sd1.5-tsc-t5xl.safetensors", CFG)
    factories.write_tsc(ella / "variants" / "small.safetensors", CFG)
    (ella / "notes.txt").write_text("x")
    t5 = ella / "t5" / "models--google--flan-t5-xl--text_encoder"
    t5.mkdir(parents=True)
    (t5 / "config.json").write_text("{}")
    (t5 / "model.safetensors").write_bytes(b"")
    deep = ella / "t5" / "google" / "flan-t5-xl"
    deep.mkdir(parents=True)
    (deep / "config.json").write_text("{}")
    (deep / "model-00001-of-00002.safetensors").write_bytes(b"")
    # a T5 folder dropped straight into models/ELLA: its weights are not ELLA models
    stray = ella / "flan-in-wrong-place"
    stray.mkdir()
    (stray / "config.json").write_text("{}")
    (stray / "model.safetensors").write_bytes(b"")
    return roots


def test_lists_models_and_encoders(models):
    assert list_ella_models(models) == ["ella-sd1.5-tsc-t5xl", "variants/small"]
    assert list_t5_encoders(models) == ["google/flan-t5-xl", "models--google--flan-t5-xl--text_encoder"]


def test_missing_roots_list_nothing(tmp_path):
    roots = ModelRoots.under(tmp_path / "nowhere")
    assert list_ella_models(roots) == [] and list_t5_encoders(roots) == []


def test_resolves_names_inside_roots(models):
    base = models.ella[0]
    assert resolve_ella_model("ella-sd1.5-tsc-t5xl", models) == base / "ella-sd1.5-tsc-t5xl.safetensors"
    assert resolve_ella_model("ella-sd1.5-tsc-t5xl [0123456789]", models).name == "ella-sd1.5-tsc-t5xl.safetensors"
    assert resolve_ella_model("variants/small.safetensors", models) == base / "variants" / "small.safetensors"
    assert resolve_t5_encoder("google/flan-t5-xl", models) == models.t5[0] / "google" / "flan-t5-xl"


def test_extra_roots(tmp_path, models):
    extra = tmp_path / "elsewhere"
    factories.write_tsc(extra / "other.safetensors", CFG)
    roots = ModelRoots.under(tmp_path / "models", extra_ella=[extra])
    assert "other" in list_ella_models(roots)
    assert resolve_ella_model("other", roots) == extra / "other.safetensors"


@pytest.mark.parametrize(
    "name, message",
    [
        ("../../etc/passwd", "outside the model folders"),
        ("variants/../../x", "outside the model folders"),
        ("/etc/passwd", "outside the model folders"),
        ("C:\\Windows\\x", "outside the model folders"),
        ("..\\x", "outside the model folders"),
        ("bad\x00name", "NUL"),
        ("a" * 600, "characters long"),
        ("", "No ELLA model selected"),
        ("   ", "No ELLA model selected"),
        ("not-there", "was not found .* Available: ella-sd1.5-tsc-t5xl"),
    ],
)
def test_refuses_bad_names(models, name, message):
    with pytest.raises(ModelPathError, match=message):
        resolve_ella_model(name, models)


def test_refuses_non_string(models):
    with pytest.raises(ModelPathError, match="must be a string"):
        resolve_t5_encoder(["x"], models)


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_symlink_leaving_the_folder_is_refused(tmp_path, models):
    outside = tmp_path / "secret.safetensors"
    factories.write_tsc(outside, CFG)
    link = models.ella[0] / "sneaky.safetensors"
    link.symlink_to(outside)
    assert "sneaky" not in list_ella_models(models)
    with pytest.raises(ModelPathError, match="link that leads outside"):
        resolve_ella_model("sneaky", models)
    t5_link = models.t5[0] / "linked"
    t5_link.symlink_to(tmp_path)
    with pytest.raises(ModelPathError, match="link that leads outside"):
        resolve_t5_encoder("linked", models)


def test_symlink_inside_the_folder_is_fine(models):
    link = models.ella[0] / "alias.safetensors"
    link.symlink_to(models.ella[0] / "ella-sd1.5-tsc-t5xl.safetensors")
    assert resolve_ella_model("alias", models) == link
