"""The Timestep-Aware Semantic Connector (TSC) of ELLA.

Computes the same function as the authors' `ELLA` module (arXiv 2403.05135, `model.py`) with the
same parameter names, so the released `ella-sd1.5-tsc-t5xl.safetensors` loads with strict key
matching. Two things differ from the reference, neither changing the numbers:

* Text rows of different lengths run in one batched call: padded keys are masked out of the
  attention, which equals running each row alone on its unpadded features (the reference loops
  over samples for that). Without a mask every key is attended, as in the reference's fixed
  128-token mode where T5's padding tokens are attended.
* The work that does not depend on the timestep (the text projection `proj_in` and the
  un-modulated LayerNorm of the projected text, the same in every block) can be done once with
  `prepare_text` and reused at every sampling step with `forward_prepared`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from .errors import DeviceError, ModelFileError
from .safetensors_file import FLOAT_DTYPES, load_tensors, read_header

DEFAULT_HEADS = 8
LN_EPS = 1e-6
MAX_PERIOD = 10000

Timesteps = Union[torch.Tensor, float, int]


@dataclass(frozen=True)
class TSCConfig:
    """Sizes of a TSC, read off the tensor shapes of its weights (all but `heads`)."""

    time_channel: int = 320
    time_embed_dim: int = 768
    width: int = 768
    layers: int = 6
    heads: int = DEFAULT_HEADS
    num_latents: int = 64
    input_dim: Optional[int] = 2048  # None: no proj_in, text features already `width` wide

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        w, te = self.width, self.time_embed_dim
        shapes: dict[str, tuple[int, ...]] = {
            "time_embedding.linear_1.weight": (te, self.time_channel),
            "time_embedding.linear_1.bias": (te,),
            "time_embedding.linear_2.weight": (te, te),
            "time_embedding.linear_2.bias": (te,),
            "connector.latents": (self.num_latents, w),
            "connector.time_aware_linear.weight": (w, te),
            "connector.time_aware_linear.bias": (w,),
        }
        if self.input_dim is not None:
            shapes["connector.proj_in.weight"] = (w, self.input_dim)
            shapes["connector.proj_in.bias"] = (w,)
        for n in range(self.layers):
            b = f"connector.perceiver_blocks.{n}."
            shapes.update(
                {
                    b + "attn.in_proj_weight": (3 * w, w),
                    b + "attn.in_proj_bias": (3 * w,),
                    b + "attn.out_proj.weight": (w, w),
                    b + "attn.out_proj.bias": (w,),
                    b + "mlp.c_fc.weight": (4 * w, w),
                    b + "mlp.c_fc.bias": (4 * w,),
                    b + "mlp.c_proj.weight": (w, 4 * w),
                    b + "mlp.c_proj.bias": (w,),
                }
            )
            for ln in ("ln_1", "ln_2", "ln_ff"):
                shapes[b + f"{ln}.linear.weight"] = (2 * w, te)
                shapes[b + f"{ln}.linear.bias"] = (2 * w,)
        return shapes

    @property
    def text_dim(self) -> int:
        return self.input_dim if self.input_dim is not None else self.width

    @property
    def num_parameters(self) -> int:
        return sum(math.prod(s) for s in self.expected_shapes().values())

    @classmethod
    def from_shapes(
        cls, shapes: dict[str, tuple[int, ...]], *, heads: int = DEFAULT_HEADS, source: str = "weights"
    ) -> TSCConfig:
        """Infer the configuration from a state dict's shapes; raise ModelFileError if it is not a TSC."""

        def need(key: str, ndim: int) -> tuple[int, ...]:
            shape = shapes.get(key)
            if shape is None:
                raise ModelFileError(
                    f"ELLA model '{source}' is not an ELLA TSC checkpoint: key '{key}' is missing "
                    f"(it has {len(shapes)} tensors, e.g. {_few(sorted(shapes))}). "
                    "Use ella-sd1.5-tsc-t5xl.safetensors from QQGYLab/ELLA."
                )
            if len(shape) != ndim:
                raise ModelFileError(
                    f"ELLA model '{source}': '{key}' has shape {list(shape)}, expected {ndim} dimensions."
                )
            return shape

        te, tc = need("time_embedding.linear_1.weight", 2)
        num_latents, width = need("connector.latents", 2)
        proj = shapes.get("connector.proj_in.weight")
        input_dim = proj[1] if proj is not None and len(proj) == 2 else None
        block_ids = {int(m.group(1)) for k in shapes if (m := re.match(r"connector\.perceiver_blocks\.(\d+)\.", k))}
        layers = max(block_ids) + 1 if block_ids else 0
        if layers == 0:
            raise ModelFileError(
                f"ELLA model '{source}' has no perceiver blocks (keys 'connector.perceiver_blocks.N.*')."
            )
        if heads <= 0 or width % heads:
            raise ModelFileError(
                f"ELLA model '{source}': width {width} is not divisible by heads={heads}; set the number of heads that "
                "the model was trained with."
            )
        return cls(
            time_channel=tc,
            time_embed_dim=te,
            width=width,
            layers=layers,
            heads=heads,
            num_latents=num_latents,
            input_dim=input_dim,
        )


def _few(items, n: int = 4) -> str:
    items = list(items)
    shown = ", ".join(repr(i) for i in items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")


def timestep_features(timesteps: torch.Tensor, channels: int) -> torch.Tensor:
    """Sinusoidal timestep features, [cos | sin], in fp32 (diffusers `Timesteps(flip_sin_to_cos=True, shift=0)`)."""
    half = channels // 2
    exponent = -math.log(MAX_PERIOD) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    args = timesteps.reshape(-1, 1).float() * torch.exp(exponent)[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if channels % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepEmbedding(nn.Module):
    def __init__(self, in_channels: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class AdaLayerNorm(nn.Module):
    """LayerNorm without affine weights, shifted and scaled by the timestep embedding."""

    def __init__(self, dim: int, time_dim: int):
        super().__init__()
        self.linear = nn.Linear(time_dim, 2 * dim)

    def modulation(self, t_act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(shift, scale), each [B, 1, dim], from silu(t_emb) [B, time_dim]."""
        shift, scale = self.linear(t_act).unsqueeze(1).chunk(2, dim=-1)
        return shift, scale

    @staticmethod
    def modulate(normed: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return normed * (1 + scale) + shift


class Attention(nn.Module):
    """Multi-head attention with `nn.MultiheadAttention`'s parameter layout (q, k, v stacked)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * dim))
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, latents: torch.Tensor, text: torch.Tensor, key_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """Queries from `latents`; keys/values from [latents; text]. key_mask: [B, L] True = real token."""
        b, n, d = latents.shape
        w, bias = self.in_proj_weight, self.in_proj_bias
        q, k_lat, v_lat = F.linear(latents, w, bias).chunk(3, dim=-1)
        k_txt, v_txt = F.linear(text, w[d:], bias[d:]).chunk(2, dim=-1)
        k = torch.cat([k_lat, k_txt], dim=1)
        v = torch.cat([v_lat, v_txt], dim=1)
        h = self.heads

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(b, x.shape[1], h, d // h).transpose(1, 2)

        mask = None
        if key_mask is not None:
            lat = torch.ones(b, n, dtype=torch.bool, device=key_mask.device)
            mask = torch.cat([lat, key_mask], dim=1)[:, None, None, :]
        out = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=mask)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class MLP(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.c_fc = nn.Linear(dim, 4 * dim)
        self.c_proj = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(torch.square(torch.relu(self.c_fc(x))))


class PerceiverBlock(nn.Module):
    def __init__(self, dim: int, heads: int, time_dim: int):
        super().__init__()
        self.attn = Attention(dim, heads)
        self.mlp = MLP(dim)
        self.ln_1 = AdaLayerNorm(dim, time_dim)
        self.ln_2 = AdaLayerNorm(dim, time_dim)
        self.ln_ff = AdaLayerNorm(dim, time_dim)

    def forward(self, latents, text_normed, key_mask, t_act):
        d = latents.shape[-1]
        normed_latents = AdaLayerNorm.modulate(F.layer_norm(latents, (d,), eps=LN_EPS), *self.ln_1.modulation(t_act))
        text = AdaLayerNorm.modulate(text_normed, *self.ln_2.modulation(t_act))
        latents = latents + self.attn(normed_latents, text, key_mask)
        ff_in = AdaLayerNorm.modulate(F.layer_norm(latents, (d,), eps=LN_EPS), *self.ln_ff.modulation(t_act))
        return latents + self.mlp(ff_in)


class PerceiverResampler(nn.Module):
    def __init__(self, cfg: TSCConfig):
        super().__init__()
        self.latents = nn.Parameter(torch.empty(cfg.num_latents, cfg.width))
        self.time_aware_linear = nn.Linear(cfg.time_embed_dim, cfg.width)
        if cfg.input_dim is not None:
            self.proj_in = nn.Linear(cfg.input_dim, cfg.width)
        self.perceiver_blocks = nn.ModuleList(
            PerceiverBlock(cfg.width, cfg.heads, cfg.time_embed_dim) for _ in range(cfg.layers)
        )


@dataclass
class PreparedText:
    """Timestep-independent part of a TSC call: LayerNorm(proj_in(features)) and the key mask."""

    normed: torch.Tensor  # [B, L, width]
    key_mask: Optional[torch.Tensor]  # [B, L] bool, True = real token; None = attend to all

    def __len__(self) -> int:
        return self.normed.shape[0]

    @property
    def nbytes(self) -> int:
        n = self.normed.numel() * self.normed.element_size()
        return n + (self.key_mask.numel() if self.key_mask is not None else 0)

    def select(self, index: torch.Tensor) -> PreparedText:
        return PreparedText(self.normed[index], self.key_mask[index] if self.key_mask is not None else None)


class TSC(nn.Module):
    """ELLA's connector: T5 features [B, L, D_in] + timesteps -> [B, num_latents, width]."""

    def __init__(self, cfg: TSCConfig):
        super().__init__()
        self.config = cfg
        self.time_embedding = TimestepEmbedding(cfg.time_channel, cfg.time_embed_dim)
        self.connector = PerceiverResampler(cfg)

    @property
    def dtype(self) -> torch.dtype:
        return self.connector.latents.dtype

    @property
    def device(self) -> torch.device:
        return self.connector.latents.device

    def prepare_text(
        self,
        features: torch.Tensor,
        lengths: Optional[torch.Tensor | list[int]] = None,
        key_mask: Optional[torch.Tensor] = None,
    ) -> PreparedText:
        """Project and normalise the text once; `lengths`/`key_mask` mark the real tokens of padded rows."""
        if features.ndim != 3 or features.shape[-1] != self.config.text_dim:
            raise ValueError(
                f"TSC expects text features [batch, tokens, {self.config.text_dim}], got {list(features.shape)}"
            )
        x = features.to(device=self.device, dtype=self.dtype)
        if self.config.input_dim is not None:
            x = self.connector.proj_in(x)
        normed = F.layer_norm(x, (x.shape[-1],), eps=LN_EPS)
        if lengths is not None:
            if key_mask is not None:
                raise ValueError("give lengths or key_mask, not both")
            lengths_t = torch.as_tensor(lengths, device=self.device).reshape(-1, 1)
            key_mask = torch.arange(x.shape[1], device=self.device)[None, :] < lengths_t
        if key_mask is not None:
            key_mask = key_mask.to(device=self.device, dtype=torch.bool)
            if key_mask.shape != x.shape[:2]:
                raise ValueError(f"key_mask must be [batch, tokens] = {list(x.shape[:2])}, got {list(key_mask.shape)}")
            if bool(key_mask.all()):
                key_mask = None  # nothing padded: take the unmasked (faster) attention path
        return PreparedText(normed, key_mask)

    def timestep_activation(self, timesteps: Timesteps, batch: int) -> torch.Tensor:
        """silu(time_embedding(sinusoid(t))) per row: [batch, time_embed_dim]."""
        t = torch.as_tensor(timesteps, device=self.device)
        t = t.reshape(-1)
        if t.numel() == 1:
            t = t.expand(batch)
        elif t.numel() != batch:
            raise ValueError(f"timesteps must be a scalar or have one entry per row ({batch}), got {t.numel()}")
        # The reference computes the sinusoid in fp32 and casts it to the features' dtype.
        feats = timestep_features(t, self.config.time_channel).to(self.dtype)
        return F.silu(self.time_embedding(feats))

    def forward_prepared(self, text: PreparedText, timesteps: Timesteps) -> torch.Tensor:
        b = len(text)
        t_act = self.timestep_activation(timesteps, b)
        c = self.connector
        latents = c.latents.unsqueeze(0).expand(b, -1, -1) + c.time_aware_linear(t_act).unsqueeze(1)
        for block in c.perceiver_blocks:
            latents = block(latents, text.normed, text.key_mask, t_act)
        return latents

    def forward(
        self,
        features: torch.Tensor,
        timesteps: Timesteps,
        lengths: Optional[torch.Tensor | list[int]] = None,
        key_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        return self.forward_prepared(self.prepare_text(features, lengths=lengths, key_mask=key_mask), timesteps)


_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def load_ella(
    path: Union[str, Path],
    device: Union[str, torch.device] = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    heads: int = DEFAULT_HEADS,
) -> TSC:
    """Load ELLA TSC weights from a .safetensors file with strict key and shape matching."""
    if dtype not in _SUPPORTED_DTYPES:
        raise DeviceError(f"ELLA model dtype {dtype} is not supported; use float32, float16 or bfloat16.")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise DeviceError(f"ELLA device {device!r} is not a valid torch device: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"ELLA device '{device}' was requested but CUDA is not available; use device='cpu'.")

    what = "ELLA model"
    header = read_header(path, error=ModelFileError, what=what)
    shapes = header.shapes()
    cfg = TSCConfig.from_shapes(shapes, heads=heads, source=str(path))
    expected = cfg.expected_shapes()
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    wrong = sorted(k for k in expected if k in shapes and tuple(shapes[k]) != expected[k])
    problems = []
    if missing:
        problems.append(f"missing keys {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_few(unexpected)}")
    if wrong:
        problems.append("wrong shapes " + _few(f"{k}: {list(shapes[k])} != {list(expected[k])}" for k in wrong))
    if problems:
        raise ModelFileError(
            f"ELLA model '{path}' does not match the ELLA TSC layout ({'; '.join(problems)}). "
            "Use an ELLA TSC checkpoint such as ella-sd1.5-tsc-t5xl.safetensors."
        )
    non_float = sorted(k for k, info in header.tensors.items() if info.dtype not in FLOAT_DTYPES)
    if non_float:
        raise ModelFileError(
            f"ELLA model '{path}' stores non-float tensors ({_few(non_float)}: {header.tensors[non_float[0]].dtype}); "
            "quantised ELLA files are not supported."
        )

    state = load_tensors(header, expected, dtype=dtype, device=device, error=ModelFileError, what=what)
    with torch.device("meta"):
        model = TSC(cfg)
    model.load_state_dict(state, strict=True, assign=True)
    model.requires_grad_(False)
    return model.eval()
