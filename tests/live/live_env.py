"""Where the live WebUI is and the tiny models every live test names (written by conftest.py)."""

import os
from pathlib import Path

URL = (os.environ.get("ELLA_WEBUI_URL") or "").rstrip("/")
MODELS = Path(os.environ.get("ELLA_WEBUI_MODELS_DIR") or ".")
CONFIGURED = bool(os.environ.get("ELLA_WEBUI_URL") and os.environ.get("ELLA_WEBUI_MODELS_DIR"))
MODEL = "ella-live-tiny"
T5 = "flan-live-tiny"


def write_tiny_models() -> None:
    import factories
    from webui_env import SD15_TINY

    from ella_ext.tsc import TSCConfig

    tsc = MODELS / "ELLA" / f"{MODEL}.safetensors"
    if not tsc.exists():
        factories.write_tsc(tsc, TSCConfig(**SD15_TINY), seed=5)
    t5 = MODELS / "ELLA" / "t5" / T5
    if not (t5 / "config.json").exists():
        factories.write_t5_folder(t5, "ella", seed=2)
