"""The prepared CUDA check: every question a first GPU session has to settle, in one command.

    python3 bench/gpu_check.py --out "$OUT"      # on the GPU machine: full sizes, <= 5 min on one H200
    make gpu-check                               # the same (GPU_CHECK_ARGS="--out DIR" to choose where)
    python bench/gpu_check.py --device cpu       # without CUDA: the same code at reduced sizes (CI runs it)

It needs only torch, transformers, safetensors, sentencepiece, tokenizers and numpy (no diffusers:
the SD1.5 U-Net is bench/sd15_unet.py). It prints one PASS / FAIL / INFO row per measurement and
writes the rows, with the raw numbers of each section, to <out>/gpu-check.json (and the table to
gpu-check.txt). Sections (bench/README.md says how to read them):

  tsc      the released-size TSC (66.8M weights, random) in fp16 on the device against fp32 on the CPU,
           flexible-length rows (batched with a key mask) and fixed-128 rows
  t5       a flan-t5-xl-size random encoder written as a released ELLA folder and loaded through
           ella_ext.t5.load_t5_encoder: fp16 on the device vs fp32 on the device and vs fp16 on the CPU,
           finite on DPG-Bench prompts, the inf/NaN guard on an input that overflows fp16, encode time
           at the DPG p10 / median / max length, load time, peak VRAM
  job      whole jobs through scripts/ella.py in the fake WebUI (tests/fake_webui) with its tensors on the
           device, for each T5 residency (offload / keep / unload): what each U-Net call receives against
           the CPU fp32 reference, VRAM before / during / after, where T5 waits, T5 move times, and the
           first job's latency (connector load, T5 load, encode)
  unet     ELLA's per-step cost against an SD1.5-size U-Net at 512x512, batch 1 and 4 with CFG, in one run
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent
for _p in (ROOT / "bench", ROOT / "tests", ROOT):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import factories  # noqa: E402
import torch  # noqa: E402
from run import FLAN_T5_XL, FixedFeatures, run_steps, sigmas_to_t, t5_length, tsc_job  # noqa: E402
from sd15_unet import SD15_CHANNELS, SD15_PARAMETERS, SD15UNet  # noqa: E402

from ella_ext.settings import Residency  # noqa: E402
from ella_ext.t5 import Tokens, load_t5_encoder  # noqa: E402
from ella_ext.tsc import TSC, TSCConfig, load_ella  # noqa: E402

SECTIONS = ("tsc", "t5", "job", "unet")
POLICY_NAMES = {Residency.CPU: "offload", Residency.GPU: "keep", Residency.UNLOAD: "unload"}
RELEASED_TSC_WEIGHTS = 66.8e6  # ella-sd1.5-tsc-t5xl.safetensors
# Verdict limits. fp16 keeps 11 significant bits (2^-11 = 4.9e-4 relative); these allow for rounding
# accumulated through the network, and catch what a wrong mask, an overflow or a dtype mix-up does (O(1)).
LIMIT_TSC_FP16 = 1e-2  # TSC fp16 vs fp32, relative error of the worst row
LIMIT_FP32_DEVICE = 1e-4  # fp32 on the device vs fp32 on the CPU (catches TF32 or other reduced-precision matmuls)
LIMIT_T5_FP16 = 3e-2  # T5 fp16 vs fp32, worst prompt (24 layers of fp16 rounding)
LIMIT_GUARD = 1e-4  # the guard's fp32 re-encode vs an fp32 encoder: the same weights, the same precision
LIMIT_CONTEXT = 3e-2  # a U-Net call's context (fp16 T5 + fp16 TSC) vs the CPU fp32 reference
LIMIT_LEFTOVER = 8 * 2**20  # bytes on the device a job may leave beyond what the residency policy keeps
LIMIT_STEP_SHARE = 0.10  # ELLA's step as a share of the U-Net forward (full sizes only)


@dataclass(frozen=True)
class Sizes:
    """What is measured: the released sizes (full) or small ones that run the same code on a CPU (reduced)."""

    name: str
    t5: dict  # T5 config.json of the random encoder
    tsc: TSCConfig
    unet_channels: tuple[int, ...]
    latent: int  # latent side (image side / 8)
    trap_id: int  # token id the encoder is rigged to overflow fp16 on (outside the tokenizer's vocabulary)
    dpg_finite: Optional[int]  # DPG prompts checked for finite fp16 output (None: all)
    dpg_compare: int  # prompts compared fp16 vs fp32 on the device
    cpu_compare: int  # prompts compared with the CPU fp16 path
    job_steps: int
    ella_steps: int  # steps of the job whose per-step cost is set against the U-Net
    reps: int  # timing repetitions


FULL = Sizes(
    name="full",
    t5=dict(FLAN_T5_XL),
    tsc=TSCConfig(),
    unet_channels=SD15_CHANNELS,
    latent=64,
    trap_id=32000,
    dpg_finite=None,
    dpg_compare=32,
    cpu_compare=2,  # fp16 on a CPU is slow (no fast fp16 matmul): seconds per prompt at flan-t5-xl size
    job_steps=6,
    ella_steps=25,
    reps=20,
)
REDUCED = Sizes(
    name="reduced",
    t5=dict(FLAN_T5_XL, d_model=32, d_ff=64, d_kv=8, num_heads=4, num_layers=2, num_decoder_layers=2, vocab_size=1024),
    # 768 wide as SD1.5's context must be; small elsewhere
    tsc=TSCConfig(time_channel=32, time_embed_dim=32, width=768, layers=1, heads=8, num_latents=16, input_dim=32),
    unet_channels=(32, 64, 64, 64),
    latent=8,
    trap_id=1000,
    dpg_finite=16,
    dpg_compare=4,
    cpu_compare=2,
    job_steps=2,
    ella_steps=5,
    reps=2,
)


# --- the verdict table ------------------------------------------------------------------------------


class Checks:
    def __init__(self):
        self.rows: list[dict] = []

    def add(self, section: str, what: str, verdict: str, value: Optional[float], unit: str = "", detail: str = ""):
        value = None if value is None else float(value)
        row = {"section": section, "what": what, "verdict": verdict, "value": value, "unit": unit, "detail": detail}
        self.rows.append(row)
        print(format_row(row), flush=True)
        return row

    def below(self, section, what, value, limit, unit="", detail=""):
        """PASS when value is finite and under limit."""
        ok = value is not None and math.isfinite(value) and value < limit
        return self.add(
            section, what, "PASS" if ok else "FAIL", value, unit, f"limit {limit:.0e}; {detail}".rstrip("; ")
        )

    def true(self, section, what, ok: bool, value=None, unit="", detail=""):
        return self.add(section, what, "PASS" if ok else "FAIL", value, unit, detail)

    def info(self, section, what, value, unit="", detail=""):
        return self.add(section, what, "INFO", value, unit, detail)


def format_value(v: Optional[float]) -> str:
    if v is None:
        return "-"
    if v != v or v in (math.inf, -math.inf):
        return str(v)
    if v != 0 and (abs(v) < 1e-2 or abs(v) >= 1e5):
        return f"{v:.2e}"
    return f"{v:.3g}"


def format_row(row: dict) -> str:
    return (
        f"{row['verdict']:4s}  {row['section']:5s} {row['what']:58s} {format_value(row['value']):>9s} "
        f"{row['unit']:4s} {row['detail']}"
    )


# --- device helpers ---------------------------------------------------------------------------------


class Device:
    def __init__(self, name: str):
        self.torch = torch.device(name)
        self.cuda = self.torch.type == "cuda"
        self.half = torch.float16

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def allocated(self) -> Optional[int]:
        if not self.cuda:
            return None
        self.sync()
        return torch.cuda.memory_allocated()

    def reset_peak(self):
        if self.cuda:
            self.sync()
            torch.cuda.reset_peak_memory_stats()

    def peak(self) -> Optional[int]:
        if not self.cuda:
            return None
        self.sync()
        return torch.cuda.max_memory_allocated()

    def free(self):
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()

    def timed(self, fn, reps: int, warmup: int = 1) -> float:
        """Median wall time of fn() in seconds, synchronised."""
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(reps):
            self.sync()
            t0 = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)


def mb(n: Optional[float]) -> Optional[float]:
    return None if n is None else n / 2**20


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64 on the CPU (nan if either holds inf/NaN)."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return math.nan
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def plain_prompts(n: Optional[int] = None) -> list[str]:
    """DPG-Bench prompts with no prompt syntax (brackets, colons, AND, BREAK): T5 sees them as they are."""
    out = [
        p
        for p in factories.dpg_prompts()
        if not any(c in p for c in "()[]{}<>:|\\") and " AND " not in p and "BREAK" not in p
    ]
    return out if n is None else out[:n]


def dpg_lengths() -> list[int]:
    """The p10 / median / max flan-t5 length of the DPG-Bench prompts (estimated as bench/run.py does)."""
    lengths = sorted(min(t5_length(p), 128) for p in factories.dpg_prompts())
    return [lengths[len(lengths) // 10], lengths[len(lengths) // 2], lengths[-1]]


def synthetic_tokens(n: int, vocab: int) -> Tokens:
    ids = tuple([5 + (i * 7919) % (vocab - 5) for i in range(n - 1)] + [1])
    return Tokens(ids=ids, attention_mask=(1,) * n, offsets=None)


# --- the random encoder on disk ---------------------------------------------------------------------


def write_random_t5(folder: Path, sizes: Sizes, device: Device) -> dict:
    """A random-weight T5 encoder in the released ELLA folder layout (fp16 model.safetensors, config,
    tokenizer), rigged so that one token id (`sizes.trap_id`) overflows fp16 in layer 0's feed-forward.

    The rig stands in for what real T5 does on some texts: the gated product wi_0(h) * wi_1(h) of the
    trap token reaches ~1e5 (fp16 ends at 65504), so fp16 gives inf, the mixed-sign sum in `wo` NaN,
    while fp32 stays finite. Other tokens are barely touched (their product stays ~1e2)."""
    from safetensors.torch import save_file
    from transformers import T5Config, T5EncoderModel

    t0 = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    factories.write_tokenizer(folder)
    cfg = sizes.t5
    with torch.device("meta"):
        model = T5EncoderModel(T5Config(**{k: v for k, v in cfg.items() if k != "architectures"}))
    g = torch.Generator(device=device.torch).manual_seed(0)
    state = {}
    for key, p in model.state_dict().items():
        if key == "encoder.embed_tokens.weight":
            continue  # tied to shared.weight, as in the released folder
        std = 0.5 if p.ndim == 1 else p.shape[-1] ** -0.5
        state[key] = torch.randn(p.shape, generator=g, device=device.torch) * std
    d = cfg["d_model"]
    trap = torch.randn(d, generator=g, device=device.torch) * (1000 / d**0.5)  # dominates the residual stream
    state["shared.weight"][sizes.trap_id] = trap
    ln = state["encoder.block.0.layer.1.layer_norm.weight"]
    v = ln * trap / trap.pow(2).mean().sqrt()  # what layer 0's feed-forward sees of the trap token
    rows = v * (320 / v.pow(2).sum())  # row . v = 320: gelu(320) * 320 ~ 1e5
    for name in ("wi_0", "wi_1"):
        state[f"encoder.block.0.layer.1.DenseReluDense.{name}.weight"][:8] = rows
    half = {k: v.to(torch.float16).cpu().contiguous() for k, v in state.items()}
    del state
    save_file(half, str(folder / "model.safetensors"))
    nbytes = sum(v.numel() * v.element_size() for v in half.values())
    n_params = sum(v.numel() for v in half.values())
    del half
    (folder / "config.json").write_text(
        json.dumps(dict(cfg, architectures=["T5EncoderModel"], is_encoder_decoder=False))
    )
    device.free()
    return {"file_bytes": nbytes, "parameters": n_params, "write_s": time.perf_counter() - t0}


# --- tsc ------------------------------------------------------------------------------------------


def check_tsc(c: Checks, ctx: dict) -> dict:
    dev, sizes = ctx["device"], ctx["sizes"]
    cfg = sizes.tsc
    state = factories.random_tsc_state(cfg, seed=0)

    def build(device, dtype):
        with torch.device("meta"):
            m = TSC(cfg)
        m.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in state.items()}, strict=True, assign=True)
        return m.eval().requires_grad_(False)

    ref = build("cpu", torch.float32)
    half = build(dev.torch, torch.float16)
    full = build(dev.torch, torch.float32)
    n_params = cfg.num_parameters
    if sizes.name == "full":
        c.true(
            "tsc",
            "TSC weights (the released config)",
            abs(n_params - RELEASED_TSC_WEIGHTS) < 0.05e6,
            n_params / 1e6,
            "M",
            f"released file: {RELEASED_TSC_WEIGHTS / 1e6:.1f}M",
        )
    else:
        c.info("tsc", "TSC weights (reduced config)", n_params / 1e6, "M", "reduced sizes")

    prompts = factories.dpg_prompts(8)
    lengths = [min(t5_length(p), 128) for p in prompts]
    g = torch.Generator().manual_seed(1)
    t = torch.linspace(999.0, 1.0, len(prompts))
    flex = torch.zeros(len(prompts), max(lengths), cfg.text_dim)
    for i, n in enumerate(lengths):
        flex[i, :n] = torch.randn(n, cfg.text_dim, generator=g) * 0.2
    fixed = torch.randn(len(prompts), 128, cfg.text_dim, generator=g) * 0.2
    out: dict[str, Any] = {"parameters": n_params, "lengths": lengths}
    with torch.inference_mode():
        # the reference: each row alone on its unpadded features, fp32, CPU (the authors' loop)
        ref_flex = [ref(flex[i : i + 1, :n], t[i : i + 1])[0] for i, n in enumerate(lengths)]
        ref_fixed = ref(fixed, t)
        for label, model in (("fp16", half), ("fp32", full)):
            dtype = torch.float16 if label == "fp16" else torch.float32
            got_flex = model(flex.to(dev.torch, dtype), t.to(dev.torch), lengths=lengths)
            got_fixed = model(fixed.to(dev.torch, dtype), t.to(dev.torch))
            e_flex = max(rel_err(got_flex[i], ref_flex[i]) for i in range(len(lengths)))
            e_fixed = max(rel_err(got_fixed[i], ref_fixed[i]) for i in range(len(lengths)))
            out[label] = {
                "flexible_rel_err": e_flex,
                "fixed128_rel_err": e_fixed,
                "dtype": str(got_flex.dtype),
                "device": str(got_flex.device),
            }
            limit = LIMIT_TSC_FP16 if label == "fp16" else LIMIT_FP32_DEVICE
            where = f"{dev.torch.type} {label}"
            c.below(
                "tsc",
                f"{where} vs CPU fp32, flexible rows (key mask), worst row",
                e_flex,
                limit,
                "rel",
                f"8 DPG lengths {min(lengths)}-{max(lengths)} batched vs each row alone",
            )
            c.below(
                "tsc",
                f"{where} vs CPU fp32, fixed-128 rows, worst row",
                e_fixed,
                limit,
                "rel",
                "8 rows x 128 tokens, all attended",
            )
    weights = sum(p.numel() * p.element_size() for p in half.parameters())
    c.info("tsc", "TSC weights on the device in fp16", mb(weights), "MB")
    out["fp16_weight_bytes"] = weights
    del half, full
    dev.free()
    return out


# --- t5 -------------------------------------------------------------------------------------------


def raw_forward(encoder, tokens: Tokens) -> torch.Tensor:
    """The encoder's own output without ELLA's inf/NaN guard."""
    with torch.inference_mode():
        ids = torch.tensor([tokens.ids], device=encoder.device)
        mask = torch.tensor([tokens.attention_mask], device=encoder.device)
        return encoder.model(input_ids=ids, attention_mask=mask).last_hidden_state


def timed_load(dev: Device, folder: Path, device, precision: str):
    dev.free()
    dev.reset_peak()
    base = dev.allocated()
    t0 = time.perf_counter()
    enc = load_t5_encoder(folder, device=device, precision=precision)
    dev.sync()
    load_s = time.perf_counter() - t0
    peak = dev.peak()
    return enc, load_s, (None if peak is None else peak - base)


def check_t5(c: Checks, ctx: dict) -> dict:
    dev, sizes, folder = ctx["device"], ctx["sizes"], ctx["t5_folder"]
    written = ctx["t5_written"]
    out: dict[str, Any] = {"written": written}
    c.info(
        "t5",
        f"random {'flan-t5-xl-size' if sizes.name == 'full' else 'reduced'} encoder written (fp16)",
        mb(written["file_bytes"]),
        "MB",
        f"{written['parameters'] / 1e6:.1f}M weights in {written['write_s']:.1f} s",
    )
    vocab = 500  # ids the trained tokenizer emits are below 512; the trap id is above
    texts = factories.dpg_prompts(sizes.dpg_finite)
    lengths = dpg_lengths()

    # fp16 on the device
    enc16, load_s, load_peak = timed_load(dev, folder, dev.torch, "fp16")
    nbytes = enc16.nbytes
    c.info(
        "t5",
        f"fp16 load to {dev.torch.type} through load_t5_encoder",
        load_s,
        "s",
        f"{mb(nbytes):.1f} MB of weights ({ctx['cache']})",
    )
    if load_peak is not None:
        c.below(
            "t5",
            "fp16 load: peak VRAM / weights",
            load_peak / nbytes,
            1.1,
            "x",
            f"{mb(load_peak):.0f} MB peak for {mb(nbytes):.0f} MB",
        )
    tokens = [enc16.tokenize(text, truncate_at=128) for text in texts]
    dev.reset_peak()
    base = dev.allocated()
    bad = [i for i, tok in enumerate(tokens) if not torch.isfinite(raw_forward(enc16, tok)).all()]
    encode_peak = dev.peak()
    c.true(
        "t5",
        f"fp16 output finite on {len(texts)} DPG-Bench prompts (no guard)",
        not bad,
        len(bad),
        "bad",
        f"first bad: {texts[bad[0]][:40]!r}"
        if bad
        else f"{min(map(len, (t.ids for t in tokens)))}-{max(len(t.ids) for t in tokens)} tokens (test tokenizer)",
    )
    if encode_peak is not None:
        c.info(
            "t5",
            "fp16 encode: peak VRAM above the weights",
            mb(encode_peak - base),
            "MB",
            f"batch 1, up to {max(len(t.ids) for t in tokens)} tokens",
        )
    times16 = [dev.timed(lambda n=n, e=enc16: e.encode(synthetic_tokens(n, vocab)), sizes.reps) for n in lengths]
    c.info(
        "t5",
        f"fp16 encode on {dev.torch.type}, median DPG length ({lengths[1]} tokens)",
        times16[1] * 1e3,
        "ms",
        f"p10 {lengths[0]} tok {times16[0] * 1e3:.1f} ms, max {lengths[2]} tok {times16[2] * 1e3:.1f} ms",
    )
    out["fp16"] = {
        "load_s": load_s,
        "load_peak_bytes": load_peak,
        "weight_bytes": nbytes,
        "nonfinite_prompts": len(bad),
        "prompts_checked": len(texts),
        "encode_peak_above_weights": None if encode_peak is None else encode_peak - base,
        "encode_s": dict(zip(("p10", "median", "max"), times16, strict=True)),
        "lengths": lengths,
    }

    compare = [tokens[i] for i in range(min(sizes.dpg_compare, len(tokens)))]
    got16 = [enc16.encode(tok).float().cpu() for tok in compare]
    trap = Tokens(
        ids=(*compare[0].ids[:-1], sizes.trap_id, 1), attention_mask=(1,) * (len(compare[0].ids) + 1), offsets=None
    )

    # fp32 on the device: the precision reference on the same device
    enc32, load32_s, load32_peak = timed_load(dev, folder, dev.torch, "fp32")
    got32 = [enc32.encode(tok).float().cpu() for tok in compare]
    trap32 = enc32.encode(trap).float().cpu()
    times32 = [
        dev.timed(lambda n=n, e=enc32: e.encode(synthetic_tokens(n, vocab)), max(1, sizes.reps // 2)) for n in lengths
    ]
    del enc32
    dev.free()
    errs = [rel_err(a, b) for a, b in zip(got16, got32, strict=True)]
    c.below(
        "t5",
        f"fp16 vs fp32 on {dev.torch.type}, worst of {len(errs)} DPG prompts",
        max(errs),
        LIMIT_T5_FP16,
        "rel",
        f"median {statistics.median(errs):.1e}",
    )
    c.info(
        "t5",
        f"fp32 encode on {dev.torch.type}, median DPG length ({lengths[1]} tokens)",
        times32[1] * 1e3,
        "ms",
        f"p10 {times32[0] * 1e3:.1f} ms, max {times32[2] * 1e3:.1f} ms; load {load32_s:.1f} s",
    )
    out["fp32"] = {
        "load_s": load32_s,
        "load_peak_bytes": load32_peak,
        "rel_err_fp16": errs,
        "encode_s": dict(zip(("p10", "median", "max"), times32, strict=True)),
    }

    # the guard: an input that overflows fp16 is encoded again in fp32, and the model goes back to fp16
    raw = raw_forward(enc16, trap)
    before = enc16.encode(compare[0])
    dev.reset_peak()
    base = dev.allocated()
    t0 = time.perf_counter()
    guarded = enc16.encode(trap)
    dev.sync()
    guard_s = time.perf_counter() - t0
    guard_peak = dev.peak()
    after = enc16.encode(compare[0])
    c.true(
        "t5",
        "overflow input: fp16 output without the guard is inf/NaN",
        not bool(torch.isfinite(raw).all()),
        float((~torch.isfinite(raw)).float().mean()),
        "frac",
        f"token {sizes.trap_id} rigged in layer 0's feed-forward",
    )
    c.below(
        "t5",
        "overflow input: guarded encode vs fp32 encoder",
        rel_err(guarded, trap32),
        LIMIT_GUARD,
        "rel",
        f"re-encoded in fp32 in {guard_s * 1e3:.0f} ms",
    )
    back = next(enc16.model.parameters()).dtype
    c.true(
        "t5",
        "after the guard: weights back in fp16, outputs unchanged",
        back == torch.float16 and torch.equal(before, after),
        None,
        "",
        f"dtype {back}",
    )
    if guard_peak is not None:
        c.info(
            "t5",
            "guard: peak VRAM above the fp16 weights",
            mb(guard_peak - base),
            "MB",
            "the fp32 re-encode holds fp32 weights for a moment",
        )
    out["guard"] = {
        "raw_nonfinite": not bool(torch.isfinite(raw).all()),
        "rel_err_vs_fp32": rel_err(guarded, trap32),
        "guard_s": guard_s,
        "guard_peak_above": None if guard_peak is None else guard_peak - base,
    }
    del enc16
    dev.free()

    # fp16 on the CPU: what a user without CUDA gets (here the same path as above in CPU mode)
    enc_cpu, load_cpu_s, _ = timed_load(dev, folder, "cpu", "fp16")
    n_cpu = min(sizes.cpu_compare, len(compare))
    errs_cpu = [rel_err(enc_cpu.encode(compare[i]), got16[i]) for i in range(n_cpu)]
    del enc_cpu
    gc.collect()
    detail = "the same path in CPU mode" if not dev.cuda else f"CPU load {load_cpu_s:.1f} s"
    c.below(
        "t5",
        f"{dev.torch.type} fp16 vs CPU fp16, worst of {n_cpu} DPG prompts",
        max(errs_cpu),
        LIMIT_T5_FP16,
        "rel",
        detail,
    )
    out["cpu_fp16"] = {"load_s": load_cpu_s, "rel_err_vs_device_fp16": errs_cpu}
    return out


# --- job: scripts/ella.py in the fake WebUI, its tensors on the device -------------------------------


class Activities:
    """Records what ELLA says it is doing (runtime.report) with timestamps: time spent per kind of activity."""

    KINDS = (
        ("ELLA: loading the connector", "connector_load"),
        ("ELLA: loading the T5 encoder", "t5_load"),
        ("ELLA: computing the sha256", "hash"),
        ("ELLA: encoding", "encode"),
    )

    def __init__(self, dev: Device, report):
        self.dev, self.report = dev, report
        self.events: list[tuple[float, Optional[str]]] = []

    def __call__(self, text: Optional[str]):
        self.dev.sync()
        self.events.append((time.perf_counter(), text))
        self.report(text)

    @classmethod
    def kind(cls, text: str) -> str:
        if text.startswith("ELLA: moving T5"):
            return "t5_off_gpu" if "off the GPU" in text else "t5_to_device"
        return next((k for prefix, k in cls.KINDS if text.startswith(prefix)), "other")

    def totals(self, end: float) -> dict[str, float]:
        out: dict[str, float] = {}
        marks = [*self.events, (end, None)]
        for (t0, text), (t1, _) in itertools.pairwise(marks):
            if text is not None:
                out[self.kind(text)] = out.get(self.kind(text), 0.0) + t1 - t0
        return out


@contextmanager
def fake_webui_on(dev: Device, cond_dtype: torch.dtype):
    """The fake WebUI with its tensors on `dev`, as A1111 has them on a GPU: devices.device, the noise, sigmas,
    CLIP's conditioning (in `cond_dtype`), and torch_gc emptying the CUDA cache as A1111's does."""
    from modules import devices, processing, sd_samplers

    saved = (
        devices.device,
        devices.dtype,
        devices.torch_gc,
        processing.StableDiffusionProcessing.noise,
        sd_samplers.CFGDenoiser.__call__,
        sd_samplers.FakeSDModel.get_learned_conditioning,
    )
    noise, call, clip, gc_ = saved[3], saved[4], saved[5], saved[2]

    def torch_gc():
        gc_()
        if dev.cuda:
            torch.cuda.empty_cache()

    devices.device, devices.dtype, devices.torch_gc = dev.torch, cond_dtype, torch_gc
    processing.StableDiffusionProcessing.noise = lambda self, shape: noise(self, shape).to(dev.torch)
    sd_samplers.CFGDenoiser.__call__ = lambda self, x, sigma, uncond, cond, scale: call(
        self, x, sigma.to(x.device), uncond, cond, scale
    )
    sd_samplers.FakeSDModel.get_learned_conditioning = lambda self, texts: [
        t.to(dev.torch, cond_dtype) for t in clip(self, texts)
    ]
    try:
        yield
    finally:
        (
            devices.device,
            devices.dtype,
            devices.torch_gc,
            processing.StableDiffusionProcessing.noise,
            sd_samplers.CFGDenoiser.__call__,
            sd_samplers.FakeSDModel.get_learned_conditioning,
        ) = saved


def forget_webui_conds():
    """Drop the fake WebUI's cond caches (the WebUI's own memory, not ELLA's) before VRAM is read."""
    from modules import processing

    for cls in (processing.StableDiffusionProcessing, processing.StableDiffusionProcessingTxt2Img):
        for name in ("cached_c", "cached_uc", "cached_hr_c", "cached_hr_uc"):
            if name in vars(cls):
                vars(cls)[name][:] = [None, None]


def sd_model_on(webui, dev: Device, calls: list):
    """A fresh fake SD1.5 model on the device whose U-Net records (dtype, device, t, context) of every call."""
    model = webui.model()
    model.sigmas = model.sigmas.to(dev.torch)
    model.alphas_cumprod = model.alphas_cumprod.to(dev.torch)
    unet = model.apply_model

    def apply_model(x, t, context):
        calls.append(
            {
                "dtype": context.dtype,
                "device": context.device,
                "shape": tuple(context.shape),
                "t": t.detach().float().cpu(),
                "context": context.detach().float().cpu(),
            }
        )
        result = unet(x, t, context)
        model.unet_calls.clear()  # the fake keeps device copies; the record above is on the CPU
        return result

    model.apply_model = apply_model
    return model


class Reference:
    """What each row should be: T5 and the TSC in fp32 on the CPU, loaded from the same files."""

    def __init__(self, t5_folder: Path, tsc_path: Path):
        self.t5 = load_t5_encoder(t5_folder, precision="fp32")
        self.tsc = load_ella(tsc_path)
        self.features: dict[str, torch.Tensor] = {}

    def row(self, text: str, t: float) -> torch.Tensor:
        if text not in self.features:
            self.features[text] = self.t5.encode(self.t5.tokenize(text, truncate_at=128)).float()
        with torch.inference_mode():
            return self.tsc(self.features[text], torch.tensor([t]))[0]


def worst(values) -> float:
    """The largest value; nan if any is nan (a nan must fail its check, not vanish in max())."""
    values = list(values)
    return math.nan if any(v != v for v in values) else max(values, default=0.0)


def check_calls(c: Checks, label, calls, pos, neg, reference, dev, cond_dtype, sizes: Sizes) -> dict:
    """What each U-Net call of one job received: shape, dtype, device, and values against the reference."""
    shapes = sorted({call["shape"] for call in calls})
    wrong = [
        f"{call['dtype']} on {call['device']}"
        for call in calls
        if call["dtype"] != cond_dtype or call["device"].type != dev.torch.type
    ]
    err = worst(
        rel_err(call["context"][row], reference.row(text, float(call["t"][row])))
        for call in calls
        for row, text in enumerate(pos + neg)
    )
    ok = not wrong and shapes == [(2 * len(pos), sizes.tsc.num_latents, 768)] and len(calls) == sizes.job_steps
    c.true(
        "job",
        f"{label}: every U-Net call got ELLA's context on {dev.torch.type}",
        ok,
        len(calls),
        "calls",
        f"{shapes} {str(cond_dtype).removeprefix('torch.')}" + (f"; got {wrong[0]}" if wrong else ""),
    )
    c.below(
        "job",
        f"{label}: context vs CPU fp32 reference, worst row",
        err,
        LIMIT_CONTEXT,
        "rel",
        f"{len(calls)} calls x {2 * len(pos)} rows",
    )
    return {"unet_calls": len(calls), "context_shapes": shapes, "wrong_place": wrong, "context_rel_err": err}


def try_drop_page_cache(sizes: Sizes) -> str:
    """A cold first load where the machine lets us (root on Linux); only at full sizes, where it is the point
    (dropping the page cache slows every other process on a shared CI machine)."""
    if sizes.name != "full":
        return "warm page cache"
    try:
        subprocess.run(
            ["sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches"], check=True, capture_output=True, timeout=60
        )
        return "cold page cache"
    except (subprocess.SubprocessError, OSError):
        return "warm page cache"


def check_job(c: Checks, ctx: dict) -> dict:
    import webui_env

    dev, sizes, models = ctx["device"], ctx["sizes"], ctx["models_dir"]
    cond_dtype = torch.float16 if dev.cuda else torch.float32  # what A1111's CLIP gives on a GPU / on a CPU
    tsc_path = models / "ELLA" / f"{webui_env.MODEL_NAME}.safetensors"
    factories.write_tsc(tsc_path, sizes.tsc, seed=3, dtype=torch.float16)  # the released file is fp16
    webui = webui_env.load_script(models)  # puts the fake WebUI's `modules` on sys.path
    from modules import shared

    runtime = webui.extension.runtime
    reference = Reference(ctx["t5_folder"], tsc_path)
    prompts = plain_prompts(6)
    jobs = [([prompts[0], prompts[1]], [prompts[2], ""]), ([prompts[3], prompts[4]], [prompts[5], ""])]
    out: dict[str, Any] = {}
    first_job: Optional[dict] = None
    original_report = runtime.report
    runtime.unload_all()
    dev.free()
    baseline = dev.allocated()  # before ELLA loaded anything
    with fake_webui_on(dev, cond_dtype):
        for policy in (Residency.CPU, Residency.GPU, Residency.UNLOAD):  # offload (the default) first: the cold job
            shared.opts.data["ella_t5_residency"] = policy.value
            runtime.unload_all()
            forget_webui_conds()
            dev.free()
            previous = dev.allocated()
            cache = try_drop_page_cache(sizes)
            records = []
            for number, (pos, neg) in enumerate(jobs, 1):
                calls: list[dict] = []
                sd_model_on(webui, dev, calls)
                activities = Activities(dev, original_report)
                runtime.report = activities
                dev.reset_peak()
                t0 = time.perf_counter()
                status, body = webui_env.run(
                    webui,
                    webui_env.payload(pos, negative_prompt=neg, batch_size=len(pos), steps=sizes.job_steps)
                    | {"alwayson_scripts": webui_env.ella()},
                )
                dev.sync()
                end = time.perf_counter()
                runtime.report = original_report
                body.pop("images", None)  # device tensors: the WebUI turns them into files
                forget_webui_conds()
                dev.free()
                after, peak = dev.allocated(), dev.peak()
                record = {
                    "policy": POLICY_NAMES[policy],
                    "job": number,
                    "status": status,
                    "wall_s": end - t0,
                    "error": None if status == 200 else body,
                    "page_cache": cache if number == 1 else "warm",
                    "activities_s": activities.totals(end),
                    "vram_before": previous,
                    "vram_peak": peak,
                    "vram_after": after,
                }
                records.append(record)
                label = f"{POLICY_NAMES[policy]:7s} job {number}"
                if status != 200:
                    c.true("job", f"{label}: the job ran", False, status, "", str(body)[:160])
                    previous = after
                    continue
                record.update(check_calls(c, label, calls, pos, neg, reference, dev, cond_dtype, sizes))
                t5 = runtime.loaded_text_encoder
                where = "unloaded" if t5 is None else t5.device.type
                expected = {Residency.GPU: dev.torch.type, Residency.CPU: "cpu", Residency.UNLOAD: "unloaded"}[policy]
                c.true(
                    "job",
                    f"{label}: T5 after the job where the policy says",
                    where == expected,
                    None,
                    "",
                    f"{where} (expected {expected})",
                )
                record["t5_after"] = where
                if dev.cuda:
                    tsc_bytes = sum(p.numel() * p.element_size() for p in runtime.loaded_tsc.model.parameters())
                    t5_bytes = t5.nbytes if where == "cuda" else 0
                    # the first job loads what the policy keeps; later jobs must not grow it
                    kept = tsc_bytes + t5_bytes if number == 1 else 0
                    leftover = after - previous - kept
                    c.below(
                        "job",
                        f"{label}: VRAM left behind beyond the policy's models",
                        abs(leftover) / 2**20,
                        LIMIT_LEFTOVER / 2**20,
                        "MB",
                        f"before {mb(previous):.0f}, peak {mb(peak):.0f}, after {mb(after):.0f} MB; resident: TSC "
                        f"{mb(tsc_bytes):.0f} + T5 {mb(t5_bytes):.0f} MB",
                    )
                    c.info("job", f"{label}: VRAM peak during the job above before", mb(peak - previous), "MB")
                    record.update(leftover_bytes=leftover, tsc_bytes=tsc_bytes, t5_resident_bytes=t5_bytes)
                moves = {k: v for k, v in record["activities_s"].items() if k in ("t5_to_device", "t5_off_gpu")}
                c.info(
                    "job",
                    f"{label}: T5 moves (to the device + off the GPU)",
                    sum(moves.values()),
                    "s",
                    ", ".join(f"{k} {v:.2f} s" for k, v in sorted(moves.items())) or "none",
                )
                if first_job is None:
                    first_job = record
                previous = after
            out[POLICY_NAMES[policy]] = records
    runtime.unload_all()  # what the WebUI's script_unloaded callback does
    del reference
    dev.free()
    if dev.cuda:
        final = dev.allocated()
        c.below(
            "job",
            "after unloading ELLA: VRAM above the start of the jobs",
            abs(final - baseline) / 2**20,
            LIMIT_LEFTOVER / 2**20,
            "MB",
            f"{mb(baseline):.0f} MB before the first job, {mb(final):.0f} MB now",
        )
        out["vram_baseline"], out["vram_final"] = baseline, final
    if first_job is not None and first_job["status"] == 200:
        a = first_job["activities_s"]
        parts = ("connector_load", "hash", "t5_load", "t5_to_device", "encode")
        latency = sum(a.get(k, 0.0) for k in parts)
        c.info(
            "job",
            "first job: connector load + T5 load + moves + encode",
            latency,
            "s",
            ", ".join(f"{k} {a.get(k, 0.0):.2f}" for k in parts) + f"; whole job {first_job['wall_s']:.2f} s "
            f"({first_job['page_cache']})",
        )
        out["first_job_latency_s"] = latency
    return out


# --- unet: ELLA's per-step cost against the U-Net ----------------------------------------------------


def check_unet(c: Checks, ctx: dict) -> dict:
    dev, sizes = ctx["device"], ctx["sizes"]
    dtype = torch.float16 if dev.cuda else torch.float32
    torch.manual_seed(0)
    with torch.device(dev.torch):
        unet = SD15UNet(sizes.unet_channels)
    unet = unet.to(dtype).eval().requires_grad_(False)
    n_params = sum(p.numel() for p in unet.parameters())
    if sizes.name == "full":
        c.true(
            "unet",
            "SD1.5 U-Net stand-in (bench/sd15_unet.py): weights",
            n_params == SD15_PARAMETERS,
            n_params / 1e6,
            "M",
            f"diffusers' SD1.5 UNet2DConditionModel: {SD15_PARAMETERS / 1e6:.2f}M",
        )
    else:
        c.info(
            "unet", "U-Net stand-in at reduced widths: weights", n_params / 1e6, "M", f"widths {sizes.unet_channels}"
        )
    cfg = sizes.tsc
    with torch.device("meta"):
        tsc = TSC(cfg)
    tsc.load_state_dict({k: v.to(dev.torch, dtype) for k, v in factories.random_tsc_state(cfg, 0).items()}, assign=True)
    tsc.eval().requires_grad_(False)
    features = FixedFeatures(dim=cfg.text_dim, device=dev.torch, dtype=dtype)
    prompts = plain_prompts(8)
    steps = sizes.ella_steps
    ts = sigmas_to_t(steps)
    out: dict[str, Any] = {"unet_parameters": n_params, "dtype": str(dtype)}
    cases = {"batch 1": ([prompts[0]], [""]), "batch 4, every row distinct": (prompts[:4], prompts[4:8])}
    side = sizes.latent
    for label, (pos, neg) in cases.items():
        batch = len(pos)
        x = torch.randn(2 * batch, 4, side, side, device=dev.torch, dtype=dtype)  # cond + uncond (CFG)
        t = torch.full((2 * batch,), 500.0, device=dev.torch)
        context = torch.randn(2 * batch, cfg.num_latents, cfg.width, device=dev.torch, dtype=dtype)

        def unet_step(x=x, t=t, context=context, unet=unet):
            with torch.inference_mode():
                return unet(x, t, context)

        def ella_job(pos=pos, neg=neg, batch=batch, tsc=tsc):
            job, plan = tsc_job(tsc, features, pos, neg, steps)
            return run_steps(job, plan, ts, batch, dev.torch, dtype)

        finite = bool(torch.isfinite(unet_step()).all())
        t_unet, t_ella = [], []
        for _ in range(max(2, sizes.reps // 4) + 1):  # interleaved; the first round is warm-up
            t_unet.append(dev.timed(unet_step, 3, warmup=0))
            t_ella.append(dev.timed(ella_job, 1, warmup=0) / steps)
        unet_s, ella_s = statistics.median(t_unet[1:]), statistics.median(t_ella[1:])
        share = ella_s / unet_s
        detail = (
            f"ELLA {ella_s * 1e3:.2f} ms/step ({steps}-step job incl. its set-up), U-Net {unet_s * 1e3:.1f} ms "
            f"(batch {2 * batch}, {side * 8}x{side * 8}, {str(dtype).removeprefix('torch.')})"
        )
        if sizes.name == "full":
            c.below("unet", f"{label} (CFG): ELLA step / U-Net forward", share, LIMIT_STEP_SHARE, "", detail)
        else:
            c.info("unet", f"{label} (CFG): ELLA step / U-Net forward", share, "", "reduced sizes: " + detail)
        out[label] = {"ella_step_s": ella_s, "unet_forward_s": unet_s, "share": share, "unet_output_finite": finite}
    del unet, tsc
    dev.free()
    return out


# --- main -------------------------------------------------------------------------------------------


def machine_info(dev: Device) -> dict:
    import transformers

    info = {
        "device": torch.cuda.get_device_name() if dev.cuda else (platform.processor() or platform.machine()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if dev.cuda:
        info["vram_total_bytes"] = torch.cuda.get_device_properties(0).total_memory
    return info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    ap.add_argument(
        "--size",
        choices=("auto", "full", "reduced"),
        default="auto",
        help="full: the released sizes (default on CUDA); reduced: small, for CPUs (default there)",
    )
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--out", default=str(ROOT / ".gpu-check"), help="folder for gpu-check.json and gpu-check.txt")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args(argv)
    name = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if name == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: this torch build sees no CUDA device")
    dev = Device(name)
    sizes = {"full": FULL, "reduced": REDUCED}.get(args.size) or (FULL if dev.cuda else REDUCED)
    only = [s for s in SECTIONS if s in args.only.split(",")]
    torch.set_num_threads(args.threads)
    if dev.cuda:
        torch.cuda.init()
        for dtype in (torch.float16, torch.float32):  # the context, cuBLAS's workspaces, before any VRAM baseline
            x = torch.ones(64, 64, device=dev.torch, dtype=dtype)
            torch.nn.functional.scaled_dot_product_attention(x[None, None], x[None, None], x[None, None]) @ x
            torch.nn.functional.linear(x, x, x[0])  # with a bias: cuBLASLt and its workspace
    mode = f"{dev.torch.type} mode, {sizes.name} sizes" + (
        "" if dev.cuda else " (no CUDA: a reduced run of the same code)"
    )
    print(
        f"ELLA GPU check: {mode}; torch {torch.__version__}, {args.threads} threads, sections {','.join(only)}",
        flush=True,
    )
    checks = Checks()
    results: dict[str, Any] = {
        "mode": dev.torch.type,
        "sizes": sizes.name,
        "machine": machine_info(dev),
        "sections": {},
        "crashed": {},
    }
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ella-gpu-check-") as tmp:
        models = Path(tmp) / "models"
        import webui_env

        folder = models / "ELLA" / "t5" / webui_env.T5_NAME
        ctx = {"device": dev, "sizes": sizes, "models_dir": models, "t5_folder": folder}
        if "t5" in only or "job" in only:
            ctx["t5_written"] = write_random_t5(folder, sizes, dev)
            ctx["cache"] = try_drop_page_cache(sizes)
        for section in only:
            t0, cpu0 = time.perf_counter(), time.process_time()
            try:
                fn = {"tsc": check_tsc, "t5": check_t5, "job": check_job, "unet": check_unet}[section]
                with torch.inference_mode(False):
                    results["sections"][section] = fn(checks, ctx)
            except Exception as exc:  # one broken section must not cost the others on a one-shot machine
                results["crashed"][section] = traceback.format_exc()
                traceback.print_exc()
                checks.add(section, "section ran to the end", "FAIL", None, "", f"{type(exc).__name__}: {exc}"[:200])
            results.setdefault("section_s", {})[section] = time.perf_counter() - t0
            print(
                f"  ({section}: {time.perf_counter() - t0:.1f} s wall, {time.process_time() - cpu0:.1f} s CPU)",
                flush=True,
            )
            dev.free()
    results["total_s"] = time.perf_counter() - t_start
    results["rows"] = checks.rows
    results["imported"] = sorted({m.split(".")[0] for m in sys.modules if not m.startswith("_")})
    results["gradio_from"] = getattr(sys.modules.get("gradio"), "__file__", None)  # the fake's, never the real one
    counts = {v: sum(r["verdict"] == v for r in checks.rows) for v in ("PASS", "FAIL", "INFO")}
    results["verdicts"] = counts
    table = [
        f"ELLA GPU check: {mode}",
        f"machine: {results['machine']['device']}, torch {torch.__version__}, "
        f"transformers {results['machine']['transformers']}; {results['total_s']:.0f} s",
        "",
    ]
    table += [format_row(r) for r in checks.rows]
    table += ["", f"{counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['INFO']} INFO"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu-check.json").write_text(json.dumps(results, indent=1, default=str))
    (out / "gpu-check.txt").write_text("\n".join(table) + "\n")
    print("\n" + "\n".join(table))
    print(f"wrote {out / 'gpu-check.json'}")
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
