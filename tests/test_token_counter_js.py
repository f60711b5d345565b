"""javascript/ella_token_counter.js under node (tests/js/token_counter.test.js), answered by ELLA's real handler."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import webui_env

ROOT = Path(__file__).resolve().parent.parent
NODE = shutil.which("node")
LONG = " ".join(["a tall ornate golden frame with carved leaves"] * 20)


def handler_answer(webui, field, text, t5=webui_env.T5_NAME, **request):
    from ella_ext.webui import token_counter

    body = json.dumps({"id": 0, "field": field, "text": text, "steps": 20, **request})
    out = token_counter.answer(webui.extension, body, t5, "Flexible", "Truncate to 128")
    found = re.fullmatch(r'<div class="ella-tokens-result">(.*)</div>', out)
    assert found, out
    return json.loads(html.unescape(found.group(1)))


@pytest.mark.skipif(NODE is None, reason="node is not installed (the JavaScript test needs node >= 18)")
def test_token_counter_script_in_node(webui, tmp_path):
    cases = [
        {"field": "prompt", "text": "a red cube on a glossy table"},
        {"field": "prompt", "text": LONG, "name": "long"},
        {"field": "hires", "text": "a red cube, [sharp:very detailed, crisp edges:25]", "hires_steps": 20},
        {"field": "clip", "text": "sks style, (masterpiece:1.3) <lora:ink:0.8>"},
        {"field": "prompt", "text": "broken", "t5": "gone"},
    ]
    for case in cases:
        extra = {k: case[k] for k in ("hires_steps",) if k in case}
        case["answer"] = handler_answer(webui, case["field"], case["text"], case.get("t5", webui_env.T5_NAME), **extra)
    assert cases[1]["answer"]["truncated"] is True and cases[0]["answer"]["truncated"] is False
    assert "error" in cases[4]["answer"]
    path = Path(os.environ.get("ELLA_KEEP_CASES", tmp_path / "cases.json"))
    path.write_text(json.dumps(cases), encoding="utf-8")
    done = subprocess.run(
        [NODE, "--test", str(ROOT / "tests" / "js" / "token_counter.test.js")],
        env={"ELLA_TOKEN_CASES": str(path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert re.search(r"# pass 8\b", done.stdout) and re.search(r"# fail 0\b", done.stdout), done.stdout[-2000:]
