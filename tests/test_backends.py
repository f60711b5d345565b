"""Each WebUI backend object: which WebUI it recognises, and how it registers callbacks there."""

import sys
from collections import namedtuple
from types import SimpleNamespace

import pytest
import webui_env

from ella_ext import backends
from ella_ext.backends import A1111, Forge, ForgeClassic, ReForge


@pytest.fixture
def webui_tree(tmp_path, monkeypatch):
    """Make a WebUI's top-level packages importable, as its own tree does: write(name, files)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    written = []

    def write(package, files=None):
        folder = tmp_path / package
        folder.mkdir()
        (folder / "__init__.py").write_text("")
        for name, text in (files or {}).items():
            (folder / name).write_text(text)
        written.append(package)
        monkeypatch.delitem(sys.modules, package, raising=False)
        monkeypatch.delitem(sys.modules, f"{package}.forge_version", raising=False)

    yield write
    # detection imported these packages; later tests must see a plain WebUI again
    for name in list(sys.modules):
        if name.split(".")[0] in written:
            del sys.modules[name]


def test_a_plain_webui_is_a1111():
    assert isinstance(backends.detect(), A1111) and type(backends.detect()) is A1111


def test_forge(webui_tree):
    webui_tree("modules_forge", {"forge_version.py": "version = '2.0.1v1.10.1'"})
    assert type(backends.detect()) is Forge


def test_reforge(webui_tree):
    webui_tree("modules_forge", {"forge_version.py": "version = '1.0.0v2-v1.10.1RC'"})
    webui_tree("ldm_patched")
    assert type(backends.detect()) is ReForge


def test_forge_classic(webui_tree):
    webui_tree("modules_forge", {"forge_version.py": 'version = "classic"'})
    webui_tree("ldm_patched")
    detected = backends.detect()
    assert type(detected) is ForgeClassic and detected.title == "Forge Classic"
    assert backends.by_name("forge-classic") is not None


def test_no_two_backends_share_a_name():
    names = [b.name for b in backends.BACKENDS]
    assert len(set(names)) == len(names) and type(backends.BACKENDS[-1]) is A1111  # the catch-all comes last


def classic_callbacks(monkeypatch):
    """Forge Classic's script_callbacks API: add_callback(callbacks, fun) finds the file itself, on_* take no name."""
    from modules import script_callbacks

    entry = namedtuple("ScriptCallback", ["script", "callback"])
    callback_map = {"callbacks_cfg_denoiser": [], "callbacks_ui_settings": []}
    searched = []

    def add_callback(callbacks, fun):
        searched.append(fun)  # the real one walks inspect.stack() here
        callbacks.append(entry("found-by-inspect.py", fun))

    monkeypatch.setattr(script_callbacks, "callback_map", callback_map, raising=False)
    monkeypatch.setattr(script_callbacks, "ScriptCallback", entry, raising=False)
    monkeypatch.setattr(script_callbacks, "add_callback", add_callback, raising=False)
    monkeypatch.setattr(
        script_callbacks,
        "on_cfg_denoiser",
        lambda callback: add_callback(callback_map["callbacks_cfg_denoiser"], callback),
    )
    return callback_map, searched


def test_forge_classic_registers_with_the_file_and_without_a_name(monkeypatch):
    webui_env.enter_fake_webui()
    callback_map, searched = classic_callbacks(monkeypatch)
    ForgeClassic().register_callback("cfg_denoiser", print, name="ella", filename="/x/sd-webui-ella/scripts/ella.py")
    assert callback_map["callbacks_cfg_denoiser"] == [("/x/sd-webui-ella/scripts/ella.py", print)]
    assert searched == []  # no stack walk


def test_any_backend_falls_back_to_on_functions_without_a_name(monkeypatch):
    """The fallback that made the script fail to load on Forge Classic: on_cfg_denoiser() got 'name'."""
    webui_env.enter_fake_webui()
    callback_map, searched = classic_callbacks(monkeypatch)
    monkeypatch.setattr("modules.script_callbacks.ScriptCallback", None)  # not the shape ForgeClassic knows
    for backend in (A1111(), ForgeClassic()):
        backend.register_callback("cfg_denoiser", len, name="ella", filename="f.py")
    assert [c.callback for c in callback_map["callbacks_cfg_denoiser"]] == [len, len] and searched == [len, len]


def test_forge_classic_timesteps_are_reforges():
    sigma = SimpleNamespace()
    model = SimpleNamespace(
        forge_objects=SimpleNamespace(
            unet=SimpleNamespace(
                model=SimpleNamespace(model_sampling=SimpleNamespace(timestep=lambda s: ("nearest", s)))
            )
        )
    )
    assert ForgeClassic().unet_timesteps(None, sigma, model) == ("nearest", sigma)
    with pytest.raises(Exception, match="model_sampling"):
        ForgeClassic().unet_timesteps(None, sigma, SimpleNamespace())
