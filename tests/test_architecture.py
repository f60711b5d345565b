"""The layering the README's contributor section describes, checked on the source.

* Only the WebUI adapter (`ella_ext/webui`, `ella_ext/backends`, `ella_ext/companions`) and `scripts/` import
  the WebUI's `modules`; the rest of `ella_ext` is a plain library.
* Loading the script the way the WebUI does imports none of the heavy libraries (transformers, safetensors,
  sentencepiece, tokenizers, huggingface_hub, fastapi): they load on first use.
* Code outside `ella_ext/backends` never compares backend names.
"""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ADAPTER = ("webui", "backends", "companions")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_only_the_adapter_imports_the_webui():
    library = ROOT / "ella_ext"
    offenders = []
    for path in sorted(library.rglob("*.py")):
        part = path.relative_to(library).parts[0]
        uses_webui = any(name == "modules" or name.startswith("modules.") for name in imported_modules(path))
        if uses_webui and part not in ADAPTER:
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []
    assert "modules" in imported_modules(library / "webui" / "settings.py")  # imports inside functions count too


def test_no_backend_name_comparisons_outside_the_backends():
    names = {"a1111", "forge", "reforge"}
    found = []
    for path in sorted((ROOT / "ella_ext").rglob("*.py")):
        if "backends" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Compare):
                consts = [c.value for c in [node.left, *node.comparators] if isinstance(c, ast.Constant)]
                if any(isinstance(v, str) and v.lower() in names for v in consts):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert found == []


def test_loading_the_script_imports_no_heavy_library():
    code = f"""
import sys
sys.path[:0] = [{str(ROOT / "tests" / "fake_webui")!r}, {str(ROOT)!r}]
import importlib.util, torch
spec = importlib.util.spec_from_file_location("ella_script", {str(ROOT / "scripts" / "ella.py")!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
heavy = ("transformers", "safetensors", "sentencepiece", "tokenizers", "huggingface_hub", "fastapi")
print(sorted(name for name in heavy if name in sys.modules))
# what a job needs loads with the first job, not at WebUI start-up
job_only = ("runtime", "plan", "t5", "tsc", "prompt_encoding", "downloads", "hub", "model_setup", "model_check",
            "caption_upsampling", "token_count", "lru_cache", "safetensors_file")
print(sorted(name for name in job_only if "ella_ext." + name in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-2:] == ["[]", "[]"]
