"""ELLA's options in the WebUI: the Settings tab (from `settings.Settings`' rows), model folders, API credentials."""

from __future__ import annotations

from pathlib import Path

from ..discovery import ModelRoots
from ..schema import from_options, setting_rows
from ..settings import Settings

SETTINGS_SECTION = ("ella", "ELLA")
CONTROLS = {"checkbox": None, "radio": "Radio", "slider": "Slider", "textbox": "Textbox", "password": "Textbox"}


def register_settings() -> None:
    """Settings tab, section "ELLA", one option per `Settings` row with a key. Called from `on_ui_settings`."""
    import gradio as gr
    from modules import shared

    for row in setting_rows(Settings):
        if not row.key:
            continue
        control = CONTROLS[row.control]
        component_args = {}
        if row.kind is not None:
            component_args["choices"] = row.kind.labels()
        if row.control == "slider":
            component_args.update(minimum=row.minimum, maximum=row.maximum, step=row.step)
        if row.control == "textbox":
            component_args["lines"] = row.lines
        if row.control == "password":  # a Textbox that shows dots (Gradio 3 and 4)
            component_args["type"] = "password"
        info = shared.OptionInfo(
            row.stored(row.default),
            row.label,
            getattr(gr, control) if control else None,
            component_args or None,
            section=SETTINGS_SECTION,
        )
        if row.info:
            info = info.info(row.info)
        shared.opts.add_option(row.key, info)


def read_settings() -> Settings:
    from modules import shared

    return from_options(Settings, shared.opts)


def model_roots() -> ModelRoots:
    """models/ELLA (or --ella-dir) and its t5/, then the extra folders of the settings."""
    from modules import paths, shared

    settings = read_settings()
    ella_dir = getattr(shared.cmd_opts, "ella_dir", None)
    base = Path(ella_dir) if ella_dir else Path(paths.models_path) / "ELLA"
    return ModelRoots(ella=(base, *_lines(settings.model_dirs)), t5=(base / "t5", *_lines(settings.t5_dirs)))


def _lines(text: str) -> list[Path]:
    return [Path(line.strip()) for line in str(text or "").replace(",", "\n").splitlines() if line.strip()]


def api_credentials() -> dict[str, str]:
    """The WebUI's --api-auth ("user:password,user2:password2"), which ELLA's routes honour like /sdapi/v1."""
    from modules import shared

    spec = getattr(shared.cmd_opts, "api_auth", None) or ""
    pairs = (item.split(":", 1) for item in spec.split(",") if ":" in item)
    return {user.strip(): password.strip() for user, password in pairs}
