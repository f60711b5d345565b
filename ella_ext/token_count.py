"""How many T5 tokens ELLA reads for a prompt, and whether it would cut them: the accordion's token counter.

The count is of what T5 is given, which is not what the WebUI's CLIP counter counts: the prompt syntax is
taken out the way ELLA takes it out (extra-network tags; emphasis brackets and weights, which change the
features, not the text; `AND` sub-prompts, each its own conditioning row; prompt editing and alternation,
each step's text), `BREAK` chunks are tokenized separately, each with its own `</s>`, and the tokens are T5's
sentencepiece pieces, not CLIP's BPE. The number shown is the largest over the sub-prompts and the steps
(the text ELLA reads at the step where it is longest); ELLA cuts a chunk at 128 tokens where the arguments
say so (*Truncate to 128*, or *Fixed 128*), and the count says whether any text of the prompt would be cut.

Only the tokenizer is loaded (a few MB, once per T5 folder), never T5's weights.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from .args import ELLAArgs
from .discovery import ModelRoots, resolve_t5_encoder
from .errors import ArgumentError
from .prompt_encoding import split_chunks
from .prompt_syntax import PromptSyntax, strip_extra_networks
from .t5_tokenizer import TOKENIZER_FILES, load_tokenizer

MAX_PROMPT_CHARS = 100_000  # a pasted novel is refused, not tokenized on every keystroke
MAX_STEPS = 1000


@dataclass(frozen=True)
class TokenCount:
    tokens: int  # T5 tokens of the longest text ELLA reads for the prompt (each BREAK chunk's </s> included)
    chunks: int  # BREAK chunks of that text
    limit: Optional[int]  # tokens per chunk where ELLA cuts; None where it keeps every token (Keep, Flexible)
    truncated: bool  # some text of the prompt (any step, sub-prompt or chunk) is longer than `limit`
    longest_chunk: int  # the most tokens in one chunk, over all the prompt's texts

    @property
    def label(self) -> str:
        """'T5 43/128' (the limit per chunk times the chunks, as the CLIP counter shows 80/150), 'T5 43' with Keep."""
        if self.limit is None:
            return f"T5 {self.tokens}"
        return f"T5 {self.tokens}/{self.limit * max(1, self.chunks)}"

    def to_dict(self) -> dict:
        return dict(asdict(self), label=self.label)


def count_tokens(
    prompt: str,
    tokenize: Callable[[str], int],
    syntax: PromptSyntax,
    *,
    limit: Optional[int],
    steps: int = 20,
    hires_steps: Optional[int] = None,
    negative: bool = False,
) -> TokenCount:
    """The count for one prompt box. `tokenize(text)` gives the T5 tokens of a plain text, `</s>` included.

    Negative prompts are not split at AND (the WebUI does not split them either)."""
    text = strip_extra_networks(prompt)
    subs = [text] if negative else [sub for sub, _weight in syntax.sub_prompts([text])[0]]
    texts = dict.fromkeys(t for schedule in syntax.schedules(subs, steps, hires_steps) for _end, t in schedule)
    best: tuple[int, int] = (0, 1)
    longest_chunk = 0
    for scheduled in texts:
        counts = [tokenize(chunk.text) for chunk in split_chunks(scheduled, syntax, use_weights=False)]
        longest_chunk = max(longest_chunk, *counts)
        best = max(best, (sum(counts), len(counts)))
    truncated = limit is not None and longest_chunk > limit
    return TokenCount(tokens=best[0], chunks=best[1], limit=limit, truncated=truncated, longest_chunk=longest_chunk)


def ella_limit(args: ELLAArgs) -> Optional[int]:
    """Tokens per chunk where ELLA cuts with these arguments: Fixed 128 always cuts (and pads), Flexible cuts
    under *Truncate to 128*."""
    return args.fixed_length or args.truncate_at


class TokenCounter:
    """Counts for the UI and the API: the selected T5 folder's tokenizer, loaded once and kept while its files
    are unchanged."""

    def __init__(
        self,
        roots: Callable[[], ModelRoots],
        syntax: Callable[[], PromptSyntax],
        default_t5: Callable[[], str] = lambda: "",
    ):
        self._roots = roots
        self._syntax = syntax
        self._default_t5 = default_t5
        self._lock = threading.Lock()
        self._tokenizers: dict[str, tuple[tuple, object]] = {}  # folder -> (its tokenizer files' stat, tokenizer)
        self.loads = 0  # tokenizers loaded (the tests check that typing loads none)

    def tokenizer(self, folder: Path):
        key = str(folder)
        files = [folder / name for name in TOKENIZER_FILES if (folder / name).is_file()]
        stamp = tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files)
        with self._lock:
            cached = self._tokenizers.get(key)
            if cached is not None and cached[0] == stamp:
                return cached[1]
            tokenizer, _note = load_tokenizer(folder)
            self.loads += 1
            if len(self._tokenizers) >= 4:
                self._tokenizers.pop(next(iter(self._tokenizers)))
            self._tokenizers[key] = (stamp, tokenizer)
            return tokenizer

    def count(
        self, prompt: str, args: ELLAArgs, *, steps: int = 20, hires_steps: Optional[int] = None, negative: bool = False
    ) -> TokenCount:
        if not isinstance(prompt, str):
            raise ArgumentError("ELLA token count: 'prompt' must be a text.")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise ArgumentError(
                f"ELLA token count: the prompt has {len(prompt)} characters; at most {MAX_PROMPT_CHARS} are counted."
            )
        for name, value in (("steps", steps), ("hires_steps", hires_steps)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_STEPS
            ):
                raise ArgumentError(f"ELLA token count: '{name}' must be a whole number from 1 to {MAX_STEPS}.")
        name = args.t5 or self._default_t5()
        if not name:
            raise ArgumentError("ELLA token count: no T5 encoder is installed or named ('t5'); see README, Models.")
        tokenizer = self.tokenizer(resolve_t5_encoder(name, self._roots()))

        def tokenize(text: str) -> int:
            return len(tokenizer(text, add_special_tokens=True)["input_ids"])

        return count_tokens(
            prompt,
            tokenize,
            self._syntax(),
            limit=ella_limit(args),
            steps=steps,
            hires_steps=hires_steps,
            negative=negative,
        )
