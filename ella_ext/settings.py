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
        "", "ella_model_dirs", control="textbox", lines=2,
        label="Extra folders with ELLA models (one per line; models/ELLA is always searched)")
    t5_dirs: str = setting(
        "", "ella_t5_dirs", control="textbox", lines=2,
        label="Extra folders with T5 encoder folders (one per line; models/ELLA/t5 is always searched)")
    t5_precision: T5Precision = setting(
        T5Precision.AUTO, "ella_t5_precision", control="radio", kind=T5Precision, label="T5 precision",
        info="auto = fp16 as the ELLA authors ran it; fp32 where the device cannot run fp16")
    t5_residency: Residency = setting(
        Residency.CPU, "ella_t5_residency", control="radio", kind=Residency, label="Where T5 waits between encodes",
        info="offloading keeps about 2.8 GB of VRAM free during sampling")
    cache_entries: int = setting(
        256, "ella_feature_cache_entries", control="slider", minimum=0, maximum=4096, step=16,
        label="T5 feature cache: prompts kept")
    cache_mb: int = setting(
        512, "ella_feature_cache_mb", control="slider", minimum=0, maximum=8192, step=64,
        label="T5 feature cache: size limit (MB, CPU memory)")
    hub_download: bool = setting(
        False, "ella_hub_download",
        label="Download the released ELLA model and T5 encoder from the Hugging Face hub when they are selected "
              "but missing")
    # not in the Settings tab
    cache_on_cpu: bool = setting(True)  # T5 features are kept in CPU memory, not VRAM
    tsc_output_cache_mb: int = setting(32)  # per job: TSC outputs reused across the batch count
