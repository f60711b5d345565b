"""Loads scripts/ella.py into the fake WebUI (tests/fake_webui) with tiny ELLA and T5 models."""

from __future__ import annotations

import functools
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

import factories
import torch

ROOT = Path(__file__).resolve().parent.parent
FAKE = Path(__file__).resolve().parent / "fake_webui"

# An SD1.5-shaped TSC (768-wide output) that is small elsewhere; input_dim = the tiny T5's d_model.
SD15_TINY = dict(time_channel=32, time_embed_dim=64, width=768, layers=1, heads=8, num_latents=64, input_dim=32)
MODEL_NAME = "ella-tiny"
T5_NAME = "flan-tiny"


def enter_fake_webui() -> None:
    """Make `import modules` / `import gradio` resolve to the fake (once per process)."""
    if str(FAKE) not in sys.path:
        sys.path.insert(0, str(FAKE))
    for name in list(sys.modules):
        if name == "gradio" or name.startswith("gradio.") or name == "modules" or name.startswith("modules."):
            if not str(getattr(sys.modules[name], "__file__", "") or "").startswith(str(FAKE)):
                del sys.modules[name]


def write_models(models_dir: Path) -> None:
    from ella_ext.tsc import TSCConfig

    factories.write_tsc(models_dir / "ELLA" / f"{MODEL_NAME}.safetensors", TSCConfig(**SD15_TINY), seed=3)
    factories.write_t5_folder(models_dir / "ELLA" / "t5" / T5_NAME, "ella", seed=1)


@dataclass
class WebUI:
    module: object  # the loaded scripts/ella.py
    models_dir: Path

    @property
    def extension(self):
        return self.module.EXTENSION

    def api(self):
        from modules.api import Api

        return Api([self.module.ELLAScript])

    def model(self, family="sd1"):
        from modules import sd_samplers, shared

        model = sd_samplers.fake_sd_model(family, shared.backend)
        shared.sd_model = model
        return model

    def set_backend(self, backend: str) -> None:
        from modules import fake_backends, shared

        from ella_ext import backends

        shared.backend = fake_backends.BY_NAME[backend]
        self.extension.backend = backends.by_name(backend)


def load_script(models_dir: Path) -> WebUI:
    """Import scripts/ella.py the way the WebUI's script loader does (by path, extension root on sys.path)."""
    enter_fake_webui()
    from modules import paths, script_callbacks, shared

    paths.models_path = str(models_dir)
    script_callbacks.clear()
    shared.opts.data.clear()
    shared.opts.data_labels.clear()
    shared.opts.data.update(
        {"use_old_scheduling": False, "pad_cond_uncond": False, "pad_cond_uncond_v0": False, "batch_cond_uncond": True}
    )
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    spec = importlib.util.spec_from_file_location("ella_script_under_test", ROOT / "scripts" / "ella.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.ELLAScript.filename = str(ROOT / "scripts" / "ella.py")  # the WebUI's loader records each script's file
    script_callbacks.ui_settings_callback()  # registers the settings, as the UI build does
    return WebUI(module=module, models_dir=models_dir)


@functools.lru_cache(maxsize=4)
def _reference_models(models_dir: Path, precision: str):
    """The reference's own T5 and TSC, loaded from scratch (once per models folder and precision)."""
    from ella_ext import load_ella
    from ella_ext.t5 import load_t5_encoder

    return (
        load_t5_encoder(models_dir / "ELLA" / "t5" / T5_NAME, precision=precision),
        load_ella(models_dir / "ELLA" / f"{MODEL_NAME}.safetensors"),
    )


def reference_conditioning(models_dir: Path, text: str, t: float, *, precision="auto", fixed=False, truncate=True):
    """What ELLA should produce for `text` at timestep `t`, computed from scratch with the library's parts."""
    encoder, tsc = _reference_models(Path(models_dir), precision)
    tokens = encoder.tokenize(
        text, fixed_length=128 if fixed else None, truncate_at=None if fixed or not truncate else 128
    )
    features = encoder.encode(tokens)
    with torch.inference_mode():
        return tsc(features.float(), torch.tensor([float(t)]))[0]


# --- request helpers shared by the lifecycle tests ---------------------------------------------


def ella(**overrides):
    """alwayson_scripts entry enabling ELLA with the tiny models (dict form)."""
    args = {"enabled": True, "model": MODEL_NAME, "t5": T5_NAME}
    args.update(overrides)
    return {"ELLA": {"args": [args]}}


def payload(prompt="a red cube on a glossy table", **kw):
    base = {"prompt": prompt, "negative_prompt": "", "steps": 4, "sampler_name": "Euler", "seed": 7, "cfg_scale": 7.0}
    base.update(kw)
    return base


def run(webui: WebUI, p: dict, img2img: bool = False):
    """POST-equivalent of /sdapi/v1/txt2img (or img2img) on the fake API: (status, body)."""
    from modules import shared

    return (webui.api().img2img if img2img else webui.api().txt2img)(p, sd_model=shared.sd_model)


def run_with_stats(webui: WebUI, p: dict):
    """run(), also returning the job's JobStats (read in postprocess, before ELLA clears the job)."""
    seen = {}
    original = webui.extension.postprocess

    def spy(job_p):
        seen["stats"] = job_p._ella_job.plan.stats
        original(job_p)

    webui.extension.postprocess = spy
    try:
        status, body = run(webui, p)
    finally:
        webui.extension.postprocess = original
    return status, body, seen.get("stats")
