"""Run by the WebUI at start-up (and after installing from the UI): install only what is missing.

Nothing here touches the WebUI's own pins (torch, transformers, gradio): ELLA works with the
versions each WebUI ships. sentencepiece is needed by the T5 tokenizer and is not pinned by
AUTOMATIC1111, Forge or reForge.
"""

import launch

REQUIRED = {
    "sentencepiece": "sentencepiece",  # T5's tokenizer
    "safetensors": "safetensors",  # the WebUIs ship it; checked for older installs
}

for module, spec in REQUIRED.items():
    if not launch.is_installed(module):
        launch.run_pip(f"install {spec}", f"{spec} for sd-webui-ella")
