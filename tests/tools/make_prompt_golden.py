"""Record what a real WebUI's prompt parser does with decorated prompts (tests/data/prompt_golden.json.gz).

    ELLA_WEBUI_SRC=/path/to/stable-diffusion-webui python tests/tools/make_prompt_golden.py

Needs `lark` (the WebUI's parser dependency). The recorded outputs are data: CI checks ELLA's own
parser against them without a WebUI.
"""

import gzip
import importlib.util
import json
import os
import sys
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import prompt_cases  # noqa: E402


def load_webui_parser(src: str):
    sys.modules.setdefault("torch", types.ModuleType("torch"))  # the parser imports torch only for tensors
    spec = importlib.util.spec_from_file_location("webui_prompt_parser", Path(src) / "modules" / "prompt_parser.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def record(pp, prompts):
    cases = []
    for prompt in prompts:
        entry = {"prompt": prompt, "schedules": [], "attention": pp.parse_prompt_attention(prompt)}
        idx, flat, _ = pp.get_multicond_prompt_list([prompt])
        entry["and"] = [[flat[i], w] for i, w in idx[0]]
        for steps, hires, old in prompt_cases.STEP_SETTINGS:
            entry["schedules"].append(
                [steps, hires, old, pp.get_learned_conditioning_prompt_schedules([prompt], steps, hires, old)[0]]
            )
        cases.append(entry)
    return cases


if __name__ == "__main__":
    pp = load_webui_parser(os.environ["ELLA_WEBUI_SRC"])
    prompts = prompt_cases.decorated_prompts(300, seed=1)
    out = HERE.parent / "data" / "prompt_golden.json.gz"
    out.write_bytes(
        gzip.compress(
            json.dumps(
                {"source": os.environ.get("ELLA_WEBUI_LABEL", "webui"), "cases": record(pp, prompts)},
                separators=(",", ":"),
            ).encode(),
            mtime=0,
        )
    )
    print(f"wrote {out}")
