"""ELLA benchmarks: every figure is a ratio of two things measured side by side in this run.

    make bench                       # CPU, ~4 min on 2 cores; prints the table, writes bench/results/<device>.json
    .venv/bin/python bench/run.py --only tsc,startup   # a subset
    .venv/bin/python bench/run.py --device cuda         # on a GPU (fp16 TSC, absolute times too)

Sections (see bench/README.md for the method):
  tsc      TSC per denoiser step: ELLA's JobPlan (dedup, one batched call, t-independent work once
           per job, output reuse across batches) vs the reference's per-sample loop, identical outputs
  unet     the TSC step vs a full-size SD1.5 U-Net forward (diffusers, random weights), 512x512, CFG
  t5       full-size flan-t5-xl encoder (random weights): load time and peak RSS vs its size,
           encode time per DPG prompt, feature-cache hit cost
  memory   peak activation bytes of one TSC step; RSS over 50 consecutive WebUI jobs
  startup  import time of scripts/ella.py inside a (fake) WebUI that already loaded torch
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import factories  # noqa: E402
import torch  # noqa: E402

from ella_ext.args import ELLAArgs  # noqa: E402
from ella_ext.plan import DenoiserCall, JobPlan, PassSpec  # noqa: E402
from ella_ext.prompt_encoding import EncodedPrompt  # noqa: E402
from ella_ext.prompt_syntax import BuiltinPromptSyntax  # noqa: E402
from ella_ext.tsc import TSC, TSCConfig  # noqa: E402

RESULTS = ROOT / "bench" / "results"
FLAN_T5_XL = {
    "architectures": ["T5EncoderModel"],
    "d_model": 2048,
    "d_ff": 5120,
    "d_kv": 64,
    "num_heads": 32,
    "num_layers": 24,
    "num_decoder_layers": 24,
    "vocab_size": 32128,
    "feed_forward_proj": "gated-gelu",
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "layer_norm_epsilon": 1e-6,
    "dropout_rate": 0.1,
    "is_encoder_decoder": False,
    "tie_word_embeddings": False,
    "model_type": "t5",
    "pad_token_id": 0,
    "eos_token_id": 1,
    "decoder_start_token_id": 0,
}


# --- helpers --------------------------------------------------------------------------------------


def t5_length(prompt: str) -> int:
    """Estimated flan-t5 token count (words and punctuation marks, plus </s>; within ~10% on plain English)."""
    return len(re.findall(r"\w+|[^\w\s]", prompt)) + 1


def proc_status_mb(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeat=5, warmup=1) -> float:
    """Median wall time of fn() in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def random_tsc(device, dtype, seed=0) -> TSC:
    """A full-size TSC (the released config) with random weights under the real key names."""
    cfg = TSCConfig()
    tsc = TSC(cfg)
    tsc.load_state_dict(factories.random_tsc_state(cfg, seed), strict=True)
    return tsc.to(device=device, dtype=dtype).eval()


class FixedFeatures:
    """A PromptEncoder stand-in: random T5-like features of each prompt's real (estimated) length."""

    def __init__(self, dim=2048, device="cpu", dtype=torch.float32):
        self.dim, self.device, self.dtype, self.features = dim, device, dtype, {}

    def encode(self, text: str) -> EncodedPrompt:
        if text not in self.features:
            g = torch.Generator().manual_seed(hash(text) % 2**31)
            n = min(t5_length(text), 128)
            self.features[text] = (torch.randn(n, self.dim, generator=g) * 0.2).to(self.device, self.dtype)
        f = self.features[text]
        return EncodedPrompt(features=f, tokens=f.shape[0], truncated=False, weighted=False)


def sigmas_to_t(steps: int) -> list[float]:
    """Fractional U-Net timesteps of a k-diffusion schedule (A1111 interpolates), high to low."""
    return [float(v) for v in torch.linspace(999.0, 0.0, steps)]


class Table:
    def __init__(self):
        self.rows = []

    def add(self, section, what, value, unit="", note=""):
        self.rows.append({"section": section, "what": what, "value": value, "unit": unit, "note": note})
        v = f"{value:.3g}" if isinstance(value, float) else str(value)
        print(f"  {section:8s} {what:62s} {v:>10s} {unit:6s} {note}", flush=True)


# --- TSC per step -------------------------------------------------------------------------------


def tsc_job(tsc, features, prompts, negatives, steps):
    plan_job = JobPlan(
        ELLAArgs(enabled=True, model="m", t5="t"), tsc, features, BuiltinPromptSyntax(), output_cache_bytes=256 * 2**20
    )
    plan = plan_job.prepare(PassSpec(tuple(prompts), tuple(negatives), steps))
    return plan_job, plan


def denoiser_call(step, total_steps, t, batch, device, dtype) -> DenoiserCall:
    """What the WebUI's denoiser callback hands ELLA: CLIP conditioning (zeros here) and the U-Net t."""
    zeros = torch.zeros(batch, 77, 768, device=device, dtype=dtype)
    return DenoiserCall(
        step=step,
        total_steps=total_steps,
        timesteps=torch.full((batch,), t, device=device),
        text_cond=zeros,
        text_uncond=zeros,
    )


def run_steps(job, plan, ts, batch, device, dtype, each_call=None):
    outs = []
    for step, t in enumerate(ts):
        call = denoiser_call(step, len(ts), t, batch, device, dtype)
        if each_call is not None:
            each_call(call)
        result = job.apply(plan, call)
        cond, uncond = result.cond, result.uncond
        outs.append(torch.cat([cond, uncond]) if cond.shape[1] == uncond.shape[1] else (cond, uncond))
    return outs


def forge_couple_regions(plan_job, lines, device, dtype):
    """What the Forge Couple companion does at every denoiser call (refill each region's tensor), on its own
    code: its regions as Forge Couple would have captured them."""
    from types import SimpleNamespace

    from ella_ext.companions.base import JobView
    from ella_ext.companions.forge_couple import ForgeCouple, Region

    companion = ForgeCouple()
    n, width = plan_job.tsc.config.num_latents, plan_job.tsc.config.width
    companion._regions = [Region(line, torch.zeros(1, n, width, device=device, dtype=dtype), False) for line in lines]
    view = JobView(SimpleNamespace(is_hr_pass=False), plan_job.args, plan_job, backend=None)
    return lambda call: companion.adapt_call(view, call)


def reference_steps(tsc, features, prompts, negatives, ts):
    """The authors' way: the TSC once per sample on its unpadded features, every step, every row."""
    outs = []
    rows = list(prompts) + list(negatives)
    with torch.inference_mode():
        for t in ts:
            per_row = [tsc(features.encode(text).features[None], torch.tensor([t], device=tsc.device)) for text in rows]
            outs.append(torch.cat(per_row))
    return outs


def bench_tsc(table, device, dtype, results):
    tsc = random_tsc(device, dtype)
    features = FixedFeatures(device=device, dtype=dtype)
    prompts = factories.dpg_prompts(64)
    steps = 4 if device == "cpu" else 20
    ts = sigmas_to_t(steps)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    results["tsc"] = {}
    for batch in (1, 4, 8):
        scenarios = {
            # one prompt for the whole batch, empty negative: the common WebUI job
            "shared": ([prompts[0]] * batch, [""] * batch),
            # every row its own prompt and negative
            "distinct": (prompts[1 : 1 + batch], prompts[20 : 20 + batch]),
        }
        for name, (pos, neg) in scenarios.items():
            a = run_steps(*tsc_job(tsc, features, pos, neg, steps), ts, batch, device, dtype)
            b = reference_steps(tsc, features, pos, neg, ts)
            err = max(float((x.float() - y.float()).abs().max()) for x, y in zip(a, b))
            assert err < tol, f"outputs differ by {err} ({name}, batch {batch})"
            rep = 3 if device == "cpu" else 10
            ours, prep, loop = [], [], []
            for _ in range(rep + 1):  # interleaved, first round is warm-up
                sync(device)
                t0 = time.perf_counter()
                job, plan = tsc_job(tsc, features, pos, neg, steps)  # once per job: T5 features -> TSC text inputs
                sync(device)
                t1 = time.perf_counter()
                run_steps(job, plan, ts, batch, device, dtype)
                sync(device)
                t2 = time.perf_counter()
                reference_steps(tsc, features, pos, neg, ts)
                sync(device)
                t3 = time.perf_counter()
                prep.append(t1 - t0)
                ours.append((t2 - t1) / steps)
                loop.append((t3 - t2) / steps)
            t_ours, t_prep, t_ref = (statistics.median(v[1:]) for v in (ours, prep, loop))
            speedup = t_ref / t_ours
            per_job = t_ref / (t_ours + t_prep / 25)
            table.add(
                "tsc",
                f"batch {batch} {name}: loop / ours per step",
                speedup,
                "x",
                f"ours {t_ours * 1e3:.1f} ms (+{t_prep * 1e3:.1f} ms once per job; {per_job:.2f}x over 25 steps), "
                f"loop {t_ref * 1e3:.1f} ms, max |diff| {err:.1e}",
            )
            results["tsc"][f"b{batch}_{name}"] = {
                "ours_s": t_ours,
                "prepare_once_s": t_prep,
                "loop_s": t_ref,
                "speedup": speedup,
                "speedup_25_steps": per_job,
                "max_abs_diff": err,
            }

    # batch count > 1: the second batch (same prompts, same sampler) reuses the first batch's outputs
    batch = 4
    pos, neg = prompts[1 : 1 + batch], prompts[20 : 20 + batch]
    job, plan = tsc_job(tsc, features, pos, neg, steps)
    sync(device)
    t0 = time.perf_counter()
    first = run_steps(job, plan, ts, batch, device, dtype)
    sync(device)
    t1 = time.perf_counter()
    calls_before = job.stats.tsc_calls
    second = run_steps(job, plan, ts, batch, device, dtype)
    sync(device)
    t2 = time.perf_counter()
    assert all(torch.equal(x, y) for x, y in zip(first, second)) and job.stats.tsc_calls == calls_before
    ratio = (t1 - t0) / (t2 - t1)
    table.add(
        "tsc",
        "batch count 2, batch 4 distinct: 1st batch / 2nd batch time",
        ratio,
        "x",
        f"2nd batch {(t2 - t1) / steps * 1e3:.2f} ms/step, 0 TSC calls",
    )
    results["tsc"]["batch_count_reuse"] = {
        "first_s": t1 - t0,
        "second_s": t2 - t1,
        "ratio": ratio,
        "second_batch_tsc_calls": job.stats.tsc_calls - calls_before,
    }

    # t-independent work (text projection + norm): the reference repeats it every step, ELLA once per job
    feats = torch.stack([features.encode(p).features[:60] for p in prompts[1:9]])
    t = torch.full((8,), 500.0, device=device)
    with torch.inference_mode():
        full = timed(lambda: tsc(feats, t), device)
        prep = timed(lambda: tsc.prepare_text(feats), device)
    table.add(
        "tsc",
        "text projection share of a full TSC forward (8 rows x 60 tokens)",
        prep / full * 100,
        "%",
        f"{prep * 1e3:.1f} ms of {full * 1e3:.0f} ms: done once per job, not every step",
    )
    results["tsc"]["prepare_once"] = {"full_forward_s": full, "prepare_text_s": prep}


# --- prompting features: regions and frames multiply rows ---------------------------------------


def bench_prompting(table, device, dtype, results):
    """Per-step cost of ELLA per region (Regional Prompter Attention) and of prompt travel (AnimateDiff),
    against plain ELLA on the same job, measured side by side."""
    from ella_ext.plan import RegionLayout

    tsc = random_tsc(device, dtype)
    features = FixedFeatures(device=device, dtype=dtype)
    steps = 4 if device == "cpu" else 20
    ts = sigmas_to_t(steps)
    regions = ["a red cube on the left", "a blue sphere in the middle", "a green cone on the right"]

    def job(prompts, negatives, layout=None, transform=None, couple=None):
        plan_job = JobPlan(
            ELLAArgs(enabled=True, model="m", t5="t"),
            tsc,
            features,
            BuiltinPromptSyntax(),
            output_cache_bytes=256 * 2**20,
        )
        plan_job.shape.regions = layout
        if transform is not None:
            plan_job.shape.cond_transforms.append(transform)
        each_call = forge_couple_regions(plan_job, couple, device, dtype) if couple else None
        return plan_job, plan_job.prepare(PassSpec(tuple(prompts), tuple(negatives), steps)), each_call

    def blend(cond):  # two keyframes, linear weights per frame (AnimateDiff's travel, on ELLA's rows)
        r = torch.linspace(0, 1, cond.shape[0], device=cond.device, dtype=cond.dtype)[:, None, None]
        return (1 - r) * cond[:1] + r * cond[-1:]

    frames = 16
    travel = [regions[0]] * (frames // 2) + [regions[1]] * (frames // 2)
    scene = "\n".join(regions)
    cases = {
        "3 RP regions vs 1 prompt": (
            (["A scene. " + " ".join(regions)], [""], None, None, 1, None),
            ([" BREAK ".join(regions)], [""], RegionLayout((1, 1, 1), (1,)), None, 1, None),
        ),
        "3 Forge Couple regions vs 1 prompt": (
            ([scene], [""], None, None, 1, None),
            ([scene], [""], None, None, 1, regions),
        ),
        "16 frames, travel vs 1 prompt": (
            ([regions[0]] * frames, [""] * frames, None, None, frames, None),
            (travel, [""] * frames, None, blend, frames, None),
        ),
    }
    results["prompting"] = {}
    for name, (plain, feature) in cases.items():
        times = {"plain": [], "feature": []}
        for _ in range(4):  # interleaved; the first round is warm-up
            for key, (pos, neg, layout, transform, batch, couple) in (("plain", plain), ("feature", feature)):
                sync(device)
                t0 = time.perf_counter()
                plan_job, plan, each_call = job(pos, neg, layout, transform, couple)
                run_steps(plan_job, plan, ts, batch, device, dtype, each_call)
                sync(device)
                times[key].append((time.perf_counter() - t0) / steps)
        t_plain, t_feature = (statistics.median(v[1:]) for v in (times["plain"], times["feature"]))
        table.add(
            "prompt",
            f"{name}: per-step cost ratio",
            t_feature / t_plain,
            "x",
            f"{t_feature * 1e3:.1f} ms vs {t_plain * 1e3:.1f} ms per step (TSC rows: one per region / distinct keyframe)",
        )
        results["prompting"][name] = {"feature_s": t_feature, "plain_s": t_plain, "ratio": t_feature / t_plain}


# --- TSC vs U-Net ---------------------------------------------------------------------------------


def bench_unet(table, device, dtype, results):
    try:
        from diffusers import UNet2DConditionModel
    except ImportError:
        table.add("unet", "skipped: diffusers not installed (pip install -r bench/requirements.txt)", 0)
        return
    torch.manual_seed(0)
    unet = (
        UNet2DConditionModel(
            sample_size=64,
            in_channels=4,
            out_channels=4,
            layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=768,
            attention_head_dim=8,
        )
        .to(device=device, dtype=dtype)
        .eval()
    )
    n_params = sum(p.numel() for p in unet.parameters())
    x = torch.randn(2, 4, 64, 64, device=device, dtype=dtype)  # 512x512, cond + uncond
    ctx = torch.randn(2, 64, 768, device=device, dtype=dtype)
    t = torch.tensor([500.0, 500.0], device=device)
    with torch.inference_mode():
        t_unet = timed(
            lambda: unet(x, t, encoder_hidden_states=ctx).sample, device, repeat=2 if device == "cpu" else 20
        )
    unet = None  # free its 3.4 GB before the TSC's turn
    gc.collect()
    tsc = random_tsc(device, dtype)
    features = FixedFeatures(device=device, dtype=dtype)
    prompt = factories.dpg_prompts(1)[0]
    steps = 25
    ts = sigmas_to_t(steps)

    def job():
        j, plan = tsc_job(tsc, features, [prompt], [""], steps)
        return run_steps(j, plan, ts, 1, device, dtype)

    t_step = timed(job, device, repeat=2 if device == "cpu" else 10) / steps
    ratio = t_step / t_unet
    table.add(
        "unet",
        "TSC step / SD1.5 U-Net forward (512x512, batch 1, CFG)",
        ratio * 100,
        "%",
        f"TSC {t_step * 1e3:.1f} ms, U-Net {t_unet * 1e3:.0f} ms ({n_params / 1e6:.0f}M params)",
    )
    results["unet"] = {"tsc_step_s": t_step, "unet_forward_s": t_unet, "ratio": ratio, "unet_params": n_params}


# --- T5 -------------------------------------------------------------------------------------------


def write_full_t5(folder: Path, dtype=torch.float16) -> int:
    """A random-weight flan-t5-xl encoder in the released ELLA layout; returns its weight bytes."""
    from safetensors.torch import save_file
    from transformers import T5Config, T5EncoderModel

    folder.mkdir(parents=True, exist_ok=True)
    factories.write_tokenizer(folder)
    with torch.device("meta"):
        model = T5EncoderModel(T5Config(**{k: v for k, v in FLAN_T5_XL.items() if k != "architectures"}))
    g = torch.Generator().manual_seed(0)
    state, nbytes = {}, 0
    for key, p in model.state_dict().items():
        if key == "encoder.embed_tokens.weight":
            continue
        std = 0.5 if p.ndim == 1 else (1.0 / p.shape[-1]) ** 0.5
        v = (torch.randn(p.shape, generator=g) * std).to(dtype)
        state[key] = v
        nbytes += v.numel() * v.element_size()
    save_file(state, str(folder / "model.safetensors"))
    del state
    gc.collect()
    (folder / "config.json").write_text(json.dumps(FLAN_T5_XL))
    return nbytes


T5_CHILD = r"""
import json, sys, time
sys.path[:0] = [sys.argv[2], sys.argv[2] + "/tests", sys.argv[2] + "/bench"]
import torch, transformers, safetensors  # what the WebUI has loaded already
from run import proc_status_mb
from ella_ext.t5 import load_t5_encoder, Tokens
from ella_ext.lru_cache import LRUCache
from ella_ext.prompt_encoding import PromptEncoder
from ella_ext.prompt_syntax import BuiltinPromptSyntax
torch.set_num_threads(int(sys.argv[5]))
precision, lengths = sys.argv[3], json.loads(sys.argv[4])
before = proc_status_mb("VmRSS")
t0 = time.perf_counter()
enc = load_t5_encoder(sys.argv[1], precision=precision)
load_s = time.perf_counter() - t0
# VmHWM, not ru_maxrss: Linux folds the parent's RSS at fork into a child's ru_maxrss at exec
peak = proc_status_mb("VmHWM")
after = proc_status_mb("VmRSS")
times = []
for n in lengths:
    ids = tuple([5 + (i * 7919) % 32000 for i in range(n - 1)] + [1])
    tok = Tokens(ids=ids, attention_mask=(1,) * n, offsets=None)
    t0 = time.perf_counter(); out = enc.encode(tok); times.append(time.perf_counter() - t0)
    assert torch.isfinite(out).all()
pe = PromptEncoder(lambda: enc, "bench", LRUCache(), BuiltinPromptSyntax(), fixed_length=None, truncate_at=128, emphasis="original")
text = sys.argv[6]
t0 = time.perf_counter(); pe.encode(text); miss = time.perf_counter() - t0
n = 2000
t0 = time.perf_counter()
for _ in range(n): pe.encode(text)
hit = (time.perf_counter() - t0) / n
print(json.dumps({"load_s": load_s, "rss_before_mb": before, "peak_rss_mb": peak, "rss_after_mb": after,
                  "encoder_mb": enc.nbytes / 2**20, "dtype": str(enc.dtype), "encode_s": times, "lengths": lengths,
                  "miss_s": miss, "hit_s": hit}))
"""


def bench_t5(table, device, results, threads):
    prompts = factories.dpg_prompts()
    lengths = sorted(min(t5_length(p), 128) for p in prompts)
    median_len = lengths[len(lengths) // 2]
    sample = [lengths[len(lengths) // 10], median_len, lengths[-1]]
    results["t5"] = {}
    with tempfile.TemporaryDirectory(prefix="ella-bench-t5-") as tmp:
        folder = Path(tmp) / "models--google--flan-t5-xl--text_encoder"
        t0 = time.perf_counter()
        file_bytes = write_full_t5(folder)
        table.add(
            "t5",
            "wrote a random flan-t5-xl encoder (fp16 safetensors)",
            file_bytes / 2**30,
            "GiB",
            f"in {time.perf_counter() - t0:.0f} s",
        )
        try:  # a cold load where we may drop the page cache (root on Linux); warm otherwise
            subprocess.run(["sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches"], check=True, capture_output=True)
            cache = "cold page cache"
        except (subprocess.CalledProcessError, OSError):
            cache = "warm page cache"
        for precision in ("fp16", "fp32"):
            if precision == "fp16" and device == "cpu" and not _cpu_half_ok():
                continue
            out = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    T5_CHILD,
                    str(folder),
                    str(ROOT),
                    precision,
                    json.dumps(sample),
                    str(threads),
                    prompts[0],
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            grow = r["peak_rss_mb"] - r["rss_before_mb"]
            table.add(
                "t5",
                f"{precision} load: peak RSS growth / encoder size",
                grow / r["encoder_mb"],
                "x",
                f"{grow:.0f} MB peak for {r['encoder_mb']:.0f} MB of weights, {r['load_s']:.1f} s ({cache})",
            )
            enc_med = r["encode_s"][1]
            table.add(
                "t5",
                f"{precision} encode, median DPG prompt ({median_len} tokens)",
                enc_med,
                "s",
                f"p10 {sample[0]} tok {r['encode_s'][0]:.2f} s, max {sample[2]} tok {r['encode_s'][2]:.2f} s",
            )
            table.add(
                "t5",
                f"{precision} cache hit vs miss (encode of a DPG prompt)",
                r["hit_s"] * 1e6,
                "us",
                f"miss {r['miss_s'] * 1e3:.0f} ms: a hit is {r['miss_s'] / r['hit_s']:.0f}x cheaper",
            )
            results["t5"][precision] = dict(r, cache=cache, file_bytes=file_bytes)
            cache = "warm page cache"


def _cpu_half_ok() -> bool:
    from ella_ext.t5 import half_dtype_runs_on

    return half_dtype_runs_on("cpu")


# --- memory -------------------------------------------------------------------------------------


class LiveTensorBytes(torch.utils._python_dispatch.TorchDispatchMode):
    """Peak bytes of the storages created inside the block and still referenced (activations)."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._refs = {}  # storage data_ptr -> [tensors alive, bytes]

    def _track(self, t):
        if not isinstance(t, torch.Tensor) or t.device.type == "meta":
            return
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key == 0:
            return
        entry = self._refs.get(key)
        if entry is None:
            entry = self._refs[key] = [0, storage.nbytes()]
            self.live += entry[1]
            self.peak = max(self.peak, self.live)
        entry[0] += 1
        weakref.finalize(t, self._release, key)

    def _release(self, key):
        entry = self._refs.get(key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            self.live -= entry[1]
            del self._refs[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            self._track(t)
        return out


def bench_memory(table, device, dtype, results):
    results["memory"] = {}
    tsc = random_tsc(device, dtype)
    weights_mb = sum(p.numel() * p.element_size() for p in tsc.parameters()) / 2**20
    features = FixedFeatures(device=device, dtype=dtype)
    prompts = factories.dpg_prompts(16)
    for label, pos, neg in (
        ("1 prompt + negative", prompts[:1], [""]),
        ("batch 8, all rows distinct", prompts[:8], prompts[8:16]),
    ):
        job, plan = tsc_job(tsc, features, pos, neg, 25)
        call = denoiser_call(0, 25, 500.0, len(pos), device, dtype)
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            job.apply(plan, call)
            torch.cuda.synchronize()
            peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        else:
            with torch.inference_mode(), LiveTensorBytes() as mode:
                job.apply(plan, call)
            peak = mode.peak / 2**20
        table.add("memory", f"TSC step activations, {label}", peak, "MB", f"TSC weights {weights_mb:.0f} MB ({dtype})")
        results["memory"][f"activations_{label}"] = peak
    results["memory"]["tsc_weights_mb"] = weights_mb

    # 50 consecutive jobs through the extension in the (fake) WebUI: RSS must not grow
    import webui_env

    with tempfile.TemporaryDirectory(prefix="ella-bench-webui-") as tmp:
        webui_env.write_models(Path(tmp))
        webui = webui_env.load_script(Path(tmp))
        all_prompts = factories.dpg_prompts(300)
        samples = []
        for i in range(50):
            webui.model()
            p = webui_env.payload(
                all_prompts[i * 5 : i * 5 + 2], negative_prompt=["blurry", all_prompts[i]], batch_size=2, steps=3
            ) | {"alwayson_scripts": webui_env.ella()}
            status, body = webui_env.run(webui, p)
            assert status == 200, body
            gc.collect()
            samples.append(proc_status_mb("VmRSS"))
        growth = samples[-1] - samples[9]
        table.add(
            "memory",
            "RSS growth from job 10 to job 50 (50 jobs, new prompts each)",
            growth,
            "MB",
            f"RSS {samples[9]:.0f} -> {samples[-1]:.0f} MB; feature cache "
            f"{webui.extension.runtime.feature_cache.stats().entries} entries",
        )
        results["memory"]["rss_mb_per_job"] = samples


# --- start-up -----------------------------------------------------------------------------------

STARTUP_CHILD = r"""
import importlib.util, sys, time
root = sys.argv[1]
sys.path[:0] = [root + "/tests/fake_webui", root]
import torch, gradio  # the WebUI has loaded these before it loads extension scripts
from modules import script_callbacks, shared
t0 = time.perf_counter()
spec = importlib.util.spec_from_file_location("ella_script", root + "/scripts/ella.py")
m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
dt = time.perf_counter() - t0
heavy = sorted(n for n in ("transformers", "safetensors", "sentencepiece", "tokenizers", "huggingface_hub") if n in sys.modules)
print(dt, ",".join(heavy) or "-")
"""


def bench_startup(table, results):
    times, heavy = [], set()
    for _ in range(7):
        out = subprocess.run(
            [sys.executable, "-c", STARTUP_CHILD, str(ROOT)], capture_output=True, text=True, check=True
        )
        dt, mods = out.stdout.split()
        times.append(float(dt))
        heavy.add(mods)
    med = statistics.median(times)
    table.add(
        "startup",
        "import scripts/ella.py (torch already loaded), median of 7",
        med * 1e3,
        "ms",
        f"target < 100 ms; heavy modules imported: {','.join(sorted(heavy))}",
    )
    results["startup"] = {"import_s": times, "heavy_modules": sorted(heavy)}


# --- main -----------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--only", default="tsc,prompting,unet,t5,memory,startup")
    ap.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 16))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = args.device
    dtype = torch.float16 if device == "cuda" else torch.float32
    only = set(args.only.split(","))
    machine = {
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": args.threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "tsc_dtype": str(dtype),
        "date": time.strftime("%Y-%m-%d"),
    }
    print(
        f"ELLA benchmarks on {device} ({machine['device']}, {args.threads} threads, torch {torch.__version__})",
        flush=True,
    )
    table, results = Table(), {"machine": machine}
    t0 = time.perf_counter()
    with torch.inference_mode(False):
        if "tsc" in only:
            bench_tsc(table, device, dtype, results)
        if "prompting" in only:
            bench_prompting(table, device, dtype, results)
        if "unet" in only:
            bench_unet(table, device, dtype, results)
        if "t5" in only:
            bench_t5(table, device, results, args.threads)
        if "memory" in only:
            bench_memory(table, device, dtype, results)
        if "startup" in only:
            bench_startup(table, results)
    results["table"] = table.rows
    results["total_s"] = time.perf_counter() - t0
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "cpu" if device == "cpu" else re.sub(r"\W+", "-", machine["device"]).strip("-").lower()
    suffix = "" if only == {"tsc", "prompting", "unet", "t5", "memory", "startup"} else "-partial"
    out = RESULTS / f"{name}{suffix}.json"
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out} in {results['total_s']:.0f} s")


if __name__ == "__main__":
    main()
