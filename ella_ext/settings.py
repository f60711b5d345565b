"""ELLA's settings: one `Settings` field per setting, each with its row for the WebUI's Settings tab.

The defaults here serve the WebUI and plain library use alike; `webui/settings.py` registers the rows
that have an option key and reads them back (`schema.from_options`).
"""

from __future__ import annotations

from dataclasses import dataclass

from .schema import Choice, setting


class T5Precision(Choice):
    AUTO = ("auto", "auto")  # fp16 as the authors ran it; fp32 where the device cannot run fp16
    FP16 = ("fp16", "fp16")
    BF16 = ("bf16", "bf16")
    FP32 = ("fp32", "fp32")


class Residency(Choice):
    """Where T5 waits between encodes."""

    GPU = ("gpu", "Keep on GPU")
    CPU = ("cpu", "Offload to CPU")
    UNLOAD = ("unload", "Unload after each job")


@dataclass
class Settings:
    model_dirs: str = setting(
        "",
        "ella_model_dirs",
        control="textbox",
        lines=2,
        label="Extra folders with ELLA models (one per line; models/ELLA is always searched)",
    )
    t5_dirs: str = setting(
        "",
        "ella_t5_dirs",
        control="textbox",
        lines=2,
        label="Extra folders with T5 encoder folders (one per line; models/ELLA/t5 is always searched)",
    )
    t5_precision: T5Precision = setting(
        T5Precision.AUTO,
        "ella_t5_precision",
        control="radio",
        kind=T5Precision,
        label="T5 precision",
        info="auto = fp16 as the ELLA authors ran it; fp32 where the device cannot run fp16",
    )
    t5_residency: Residency = setting(
        Residency.CPU,
        "ella_t5_residency",
        control="radio",
        kind=Residency,
        label="Where T5 waits between encodes",
        info="offloading keeps about 2.8 GB of VRAM free during sampling",
    )
    cache_entries: int = setting(
        256,
        "ella_feature_cache_entries",
        control="slider",
        minimum=0,
        maximum=4096,
        step=16,
        label="T5 feature cache: prompts kept",
    )
    cache_mb: int = setting(
        512,
        "ella_feature_cache_mb",
        control="slider",
        minimum=0,
        maximum=8192,
        step=64,
        label="T5 feature cache: size limit (MB, CPU memory)",
    )
    hub_download: bool = setting(
        False,
        "ella_hub_download",
        label="Download the released ELLA model and T5 encoder from the Hugging Face hub when they are selected "
        "but missing",
    )
    # caption upsampling (caption_upsampling.py): an LLM the user runs; nothing is sent while the URL is empty
    expand_url: str = setting(
        "",
        "ella_expand_url",
        control="textbox",
        label="Caption upsampling: OpenAI-compatible chat endpoint (empty = off, nothing is sent anywhere)",
        info="e.g. http://127.0.0.1:8080/v1 (llama.cpp server), http://127.0.0.1:11434/v1 (Ollama), "
        "http://127.0.0.1:1234/v1 (LM Studio); /chat/completions is added",
    )
    expand_model: str = setting(
        "",
        "ella_expand_model",
        control="textbox",
        label="Caption upsampling: model",
        info="the name the server knows it by (Ollama: e.g. qwen2.5:7b); llama.cpp's server ignores it",
    )
    expand_api_key: str = setting(
        "",
        "ella_expand_api_key",
        control="password",
        label="Caption upsampling: API key (hosted endpoints)",
        info="sent as 'Authorization: Bearer ...'; stored in the WebUI's config.json like every setting",
    )
    expand_timeout: float = setting(
        60.0,
        "ella_expand_timeout",
        control="slider",
        minimum=5,
        maximum=600,
        step=5,
        label="Caption upsampling: timeout (seconds)",
        info="without streaming: for the whole answer; with streaming: the longest pause (5x in all)",
    )
    expand_stream: bool = setting(
        True,
        "ella_expand_stream",
        label="Caption upsampling: stream the answer (slow models finish while they keep sending)",
    )
    # not in the Settings tab
    cache_on_cpu: bool = setting(True)  # T5 features are kept in CPU memory, not VRAM
    tsc_output_cache_mb: int = setting(32)  # per job: TSC outputs reused across the batch count
