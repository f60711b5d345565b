"""From one scheduled prompt text to the T5 features the TSC reads.

The text may still hold emphasis (``(word:1.3)``, ``[word]``) and ``BREAK``. The syntax is
removed before T5 sees the text; each emphasis weight then scales the features of exactly the
T5 tokens its text covers (token character offsets map text spans to token positions), and, by
default, the features are rescaled so their mean is what it was before weighting, the WebUI's
rule for CLIP ("Original"). "No norm" skips the rescale; "Ignore" drops the weights.

BREAK splits the prompt into chunks that T5 encodes separately (each with its own ``</s>``);
their features are concatenated along the token axis, so the TSC still sees the whole prompt but
T5's self-attention does not mix the chunks, the closest T5 analogue of CLIP's separate chunks.

A prompt without syntax takes exactly the same path as plain text, so its features are
bit-identical to encoding the text directly.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .logs import warn_once
from .prompt_syntax import BREAK_MARK, PromptSyntax
from .t5 import T5TextEncoder, Tokens

# T5 features are close to zero-mean (CLIP's are not), so the WebUI's mean-restoring factor
# before/after can explode or flip sign. It is applied only when it is a sane rescale; otherwise
# the weights apply unnormalised ("No norm") for that prompt.
MEAN_RESTORE_RANGE = (0.5, 2.0)


@dataclass(frozen=True)
class Chunk:
    text: str  # syntax removed
    spans: tuple[tuple[int, int, float], ...]  # (start, end, weight) character spans with weight != 1


@dataclass
class EncodedPrompt:
    features: torch.Tensor  # [L, d_model] on the cache's device, weights applied
    tokens: int  # real tokens (</s> included) over all chunks
    truncated: bool  # the long-prompt policy cut tokens off
    weighted: bool  # emphasis changed the features
    emphasis_ignored: Optional[str] = None  # why the prompt's emphasis could not be applied, if it could not


def split_chunks(text: str, syntax: PromptSyntax, use_weights: bool) -> list[Chunk]:
    """Emphasis/BREAK-parsed text as chunks of plain text with weighted character spans."""
    chunks: list[Chunk] = []
    parts: list[str] = []
    spans: list[tuple[int, int, float]] = []
    pos = 0
    for seg_text, weight in syntax.parse_attention(text):
        if (seg_text, weight) == BREAK_MARK:
            chunks.append(Chunk("".join(parts), tuple(spans)))
            parts, spans, pos = [], [], 0
            continue
        if use_weights and weight != 1.0 and seg_text:
            spans.append((pos, pos + len(seg_text), float(weight)))
        parts.append(seg_text)
        pos += len(seg_text)
    chunks.append(Chunk("".join(parts), tuple(spans)))
    return chunks


def token_weights(tokens: Tokens, spans: tuple[tuple[int, int, float], ...], text: str) -> Optional[list[float]]:
    """Per-token weights from weighted character spans of `text`.

    A token takes the weight at its first non-space character: tokenizers disagree on whether
    '▁red' starts at the space (tokenizers 0.13, A1111's pin) or at the 'r' (newer ones).
    """
    if not spans:
        return None
    if tokens.offsets is None:
        return None
    starts = [s for s, _, _ in spans]
    out = []
    for (a, b), m in zip(tokens.offsets, tokens.attention_mask):
        w = 1.0
        while a < b and text[a].isspace():
            a += 1
        if m and b > a:
            k = bisect.bisect_right(starts, a) - 1
            if k >= 0 and spans[k][0] <= a < spans[k][1]:
                w = spans[k][2]
        out.append(w)
    return out


def apply_emphasis(features: torch.Tensor, weights: list[float], restore_mean: bool) -> torch.Tensor:
    """Scale token rows by weights; optionally restore the original mean (the WebUI's 'Original' rule)."""
    w = torch.tensor(weights, dtype=torch.float32, device=features.device)[:, None]
    z = features.float()
    out = z * w
    if restore_mean:
        before, after = float(z.mean()), float(out.mean())
        if after != 0.0 and MEAN_RESTORE_RANGE[0] <= before / after <= MEAN_RESTORE_RANGE[1]:
            out = out * (before / after)
    return out.to(features.dtype)


class PromptEncoder:
    """Encodes scheduled prompt texts for one job's settings, through the shared feature cache."""

    def __init__(
        self,
        encoder_factory: Callable[[], T5TextEncoder],
        encoder_identity: str,
        cache,
        syntax: PromptSyntax,
        *,
        fixed_length: Optional[int],
        truncate_at: Optional[int],
        emphasis: str,
        storage_device: Optional[torch.device] = None,
    ):
        self._encoder_factory = encoder_factory
        self.encoder_identity = encoder_identity
        self.cache = cache
        self.syntax = syntax
        self.fixed_length = fixed_length
        self.truncate_at = truncate_at if fixed_length is None else None
        self.emphasis = emphasis
        self.storage_device = storage_device
        self._encoder: Optional[T5TextEncoder] = None

    @property
    def encoder(self) -> T5TextEncoder:
        if self._encoder is None:
            self._encoder = self._encoder_factory()
        return self._encoder

    def _raw(self, text: str) -> tuple[torch.Tensor, Tokens]:
        """Unweighted features of one plain chunk, from the cache or the encoder."""
        key = (self.encoder_identity, self.fixed_length, self.truncate_at, text)
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        tokens = self.encoder.tokenize(text, fixed_length=self.fixed_length, truncate_at=self.truncate_at)
        features = self.encoder.encode(tokens)[0]
        if self.storage_device is not None:
            features = features.to(self.storage_device)
        entry = (features, tokens)
        self.cache.put(key, entry)
        return entry

    def encode(self, text: str) -> EncodedPrompt:
        use_weights = self.emphasis != "ignore"
        pieces, n_tokens, truncated, weighted, ignored = [], 0, False, False, None
        for chunk in split_chunks(text, self.syntax, use_weights):
            features, tokens = self._raw(chunk.text)
            weights = token_weights(tokens, chunk.spans, chunk.text)
            if chunk.spans and weights is None:
                ignored = self.no_offsets_reason()
                warn_once("no-offsets", f"ELLA: {ignored}")
            if weights is not None and any(w != 1.0 for w in weights):
                features = apply_emphasis(features, weights, restore_mean=self.emphasis == "original")
                weighted = True
            pieces.append(features)
            n_tokens += tokens.n_real
            truncated = truncated or tokens.truncated
        features = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=0)
        return EncodedPrompt(
            features=features, tokens=n_tokens, truncated=truncated, weighted=weighted, emphasis_ignored=ignored
        )

    def no_offsets_reason(self) -> str:
        note = getattr(self._encoder, "tokenizer_note", None)  # the loaded encoder knows why; never load it for this
        return note or "the T5 tokenizer gives no token offsets (a slow tokenizer), so prompt emphasis is ignored."
