"""bench/gpu_check.py, the prepared CUDA check, runs to the end in its reduced CPU mode (so it cannot rot
before a GPU session runs it), and its verdicts and numbers say what they should."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

POLICIES = ("offload", "keep", "unload")
# what the GPU machine lacks (it has torch, transformers, safetensors, sentencepiece, tokenizers, numpy...)
NOT_ON_THE_GPU_MACHINE = ("diffusers", "fastapi", "starlette", "pydantic", "uvicorn")


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--device", "cpu", "--threads", "1", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return json.loads((out / "gpu-check.json").read_text()), (out / "gpu-check.txt").read_text(), proc.stdout


def rows_like(results, section, text):
    return [r for r in results["rows"] if r["section"] == section and text in r["what"]]


def test_cpu_mode_runs_every_section_to_the_end_and_says_it_is_reduced(cpu_run):
    results, table, stdout = cpu_run
    assert results["mode"] == "cpu" and results["sizes"] == "reduced"
    assert results["crashed"] == {}
    assert set(results["sections"]) == {"tsc", "t5", "job", "unet"}
    assert "reduced sizes" in stdout and "no CUDA" in table
    verdicts = {r["verdict"] for r in results["rows"]}
    assert verdicts <= {"PASS", "INFO"}, [r for r in results["rows"] if r["verdict"] == "FAIL"]
    assert results["verdicts"]["FAIL"] == 0 and results["verdicts"]["PASS"] >= 25
    assert f"{results['verdicts']['PASS']} PASS, 0 FAIL" in table
    for row in results["rows"]:
        if row["value"] is not None:
            assert math.isfinite(row["value"]), row
        assert row["verdict"] == "INFO" or row["value"] is not None or row["detail"], row


def test_every_measurement_the_gpu_session_needs_has_its_row(cpu_run):
    results, _, _ = cpu_run
    wanted = {
        "tsc": [
            "fp16 vs CPU fp32, flexible rows",
            "fp16 vs CPU fp32, fixed-128 rows",
            "fp32 vs CPU fp32, flexible rows",
        ],
        "t5": [
            "fp16 output finite on",
            "fp16 vs fp32 on cpu",
            "fp16 vs CPU fp16",
            "fp16 encode on cpu, median DPG length",
            "fp16 load to cpu",
            "overflow input: fp16 output without the guard",
            "overflow input: guarded encode",
            "after the guard",
        ],
        "job": ["first job: connector load + T5 load"]
        + [
            f"{p:7s} job {n}: {what}"
            for p in POLICIES
            for n in (1, 2)
            for what in ("every U-Net call", "context vs CPU fp32 reference", "T5 after the job", "T5 moves")
        ],
        "unet": ["batch 1 (CFG): ELLA step / U-Net forward", "batch 4, every row distinct (CFG)"],
    }
    for section, names in wanted.items():
        for name in names:
            assert len(rows_like(results, section, name)) == 1, (section, name)


def test_numbers_say_what_the_verdicts_claim(cpu_run):
    results, _, _ = cpu_run
    s = results["sections"]
    assert s["tsc"]["fp16"]["flexible_rel_err"] < 1e-2 and s["tsc"]["fp16"]["fixed128_rel_err"] < 1e-2
    assert 1e-5 < s["tsc"]["fp16"]["flexible_rel_err"]  # fp16 really ran: it cannot match fp32 exactly
    assert s["tsc"]["fp16"]["dtype"] == "torch.float16"
    t5 = s["t5"]
    assert t5["fp16"]["nonfinite_prompts"] == 0 and t5["fp16"]["prompts_checked"] == 16
    assert 0 < max(t5["fp32"]["rel_err_fp16"]) < 3e-2
    assert t5["guard"]["raw_nonfinite"] is True and t5["guard"]["rel_err_vs_fp32"] < 1e-4
    assert all(v > 0 for v in t5["fp16"]["encode_s"].values())
    job = s["job"]
    expected_t5 = {"offload": "cpu", "keep": "cpu", "unload": "unloaded"}  # the compute device is the CPU here
    for policy in POLICIES:
        assert [r["job"] for r in job[policy]] == [1, 2]
        for record in job[policy]:
            assert record["status"] == 200 and record["unet_calls"] == 2 and not record["wrong_place"]
            assert 0 < record["context_rel_err"] < 3e-2
            assert record["context_shapes"] == [[4, 16, 768]]
            assert record["t5_after"] == expected_t5[policy]
    first = job["offload"][0]["activities_s"]
    assert first["connector_load"] > 0 and first["t5_load"] > 0 and first["encode"] > 0
    assert "t5_load" not in job["offload"][1]["activities_s"]  # offload keeps T5 loaded between jobs
    assert job["unload"][1]["activities_s"]["t5_load"] > 0  # unload loads it again
    assert job["first_job_latency_s"] > 0
    for case in ("batch 1", "batch 4, every row distinct"):
        assert s["unet"][case]["share"] > 0 and s["unet"][case]["unet_output_finite"]


def test_the_check_needs_nothing_the_gpu_machine_lacks(cpu_run):
    results, _, _ = cpu_run
    assert not set(NOT_ON_THE_GPU_MACHINE) & set(results["imported"])
    assert Path(results["gradio_from"]).is_relative_to(ROOT / "tests" / "fake_webui")


def test_unet_stand_in_has_sd15_weights_exactly():
    from sd15_unet import SD15_PARAMETERS, SD15UNet

    with torch.device("meta"):
        unet = SD15UNet()
    assert sum(p.numel() for p in unet.parameters()) == SD15_PARAMETERS == 859_520_964
    small = SD15UNet((32, 64, 64, 64))
    out = small(torch.randn(2, 4, 8, 8), torch.tensor([10.0, 900.0]), torch.randn(2, 16, 768))
    assert out.shape == (2, 4, 8, 8) and torch.isfinite(out).all()


def test_a_nan_fails_its_check():
    import gpu_check

    checks = gpu_check.Checks()
    assert checks.below("t", "nan", math.nan, 1.0)["verdict"] == "FAIL"
    assert checks.below("t", "over", 2.0, 1.0)["verdict"] == "FAIL"
    assert checks.below("t", "under", 0.5, 1.0)["verdict"] == "PASS"
    assert math.isnan(gpu_check.worst([0.1, math.nan, 0.2])) and gpu_check.worst([0.1, 0.3]) == 0.3
    assert math.isnan(gpu_check.rel_err(torch.tensor([math.inf]), torch.tensor([1.0])))
