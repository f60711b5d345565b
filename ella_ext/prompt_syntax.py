"""The WebUI's prompt language, as ELLA needs it.

The WebUI turns a prompt into CLIP conditioning in four steps, and ELLA must follow the same steps
so that a prompt means the same thing with T5:

1. extra-network tags (``<lora:name:0.8>``) are removed;
2. ``AND`` splits a positive prompt into weighted sub-prompts (composable diffusion), each its own
   conditioning row;
3. prompt editing ``[a:b:N]`` and alternation ``[a|b]`` give each sub-prompt a schedule: the text
   to use up to each sampling step;
4. emphasis ``(word:1.3)`` / ``[word]`` and ``BREAK`` are read from each scheduled text.

`BuiltinPromptSyntax` implements the four steps with the WebUI's semantics. Inside a WebUI the
extension passes the WebUI's own parser instead (see `PromptSyntax`), so the text T5 encodes
switches at exactly the steps where the WebUI switches CLIP's; the test suite checks that both
agree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional, Protocol, Sequence, Union

Schedule = list[tuple[int, str]]  # [(end_at_step, text), ...], ascending end_at_step
Segment = tuple[str, float]  # (text, weight); ("BREAK", -1.0) marks a BREAK

EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")
AND_SEPARATOR = re.compile(r"\bAND\b")
SUBPROMPT_WEIGHT = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")
BREAK_SEPARATOR = re.compile(r"\s*\bBREAK\b\s*", re.S)  # the WebUI's; use split_break (linear time)
_BREAK_WORD = re.compile(r"\bBREAK\b")
_WEIGHT = re.compile(r"[-+]?(?:\d+\.?|\d*\.\d+)")
MAX_NESTING = 100  # prompt editing nested deeper than this is left unscheduled by the built-in parser
BREAK_MARK: Segment = ("BREAK", -1.0)


class PromptSyntax(Protocol):
    def schedules(
        self, prompts: Sequence[str], steps: int, hires_steps: Optional[int] = None, use_old_scheduling: bool = False
    ) -> list[Schedule]: ...

    def sub_prompts(self, prompts: Sequence[str]) -> list[list[tuple[str, float]]]:
        """Each prompt's AND sub-prompts with their weights: one call for a pass's whole batch, as the WebUI
        makes it (extensions that extend AND keep per-batch state in that call)."""
        ...

    def parse_attention(self, text: str) -> list[Segment]: ...


# The WebUI's patterns backtrack: EXTRA_NETWORK over '<a:' repeated with no '>' after it, and the leading
# \s* of BREAK_SEPARATOR and SUBPROMPT_WEIGHT over long runs of spaces, take time that grows with the square
# of the length. The functions below give the same results in linear time.


def find_extra_network(text: str) -> Optional[re.Match]:
    """The first extra-network tag `<name:args>` in text, as EXTRA_NETWORK.search finds it."""
    return EXTRA_NETWORK.search(text, 0, text.rfind(">") + 1)  # no tag ends after the last '>'


def extra_network_tags(text: str) -> list[str]:
    """Every extra-network tag in text, in order, as EXTRA_NETWORK.finditer finds them (in linear time)."""
    return [m.group(0) for m in EXTRA_NETWORK.finditer(text, 0, text.rfind(">") + 1)]


def sub_extra_networks(text: str, repl: Any = "") -> str:
    """EXTRA_NETWORK.sub(repl, text), in linear time: no tag ends after the last '>'."""
    end = text.rfind(">") + 1
    return EXTRA_NETWORK.sub(repl, text[:end]) + text[end:]


def strip_extra_networks(prompt: str) -> str:
    return sub_extra_networks(prompt)


def split_break(text: str) -> list[str]:
    """BREAK_SEPARATOR.split(text): the parts around each BREAK, with the spaces around it removed."""
    parts, start, pos, n = [], 0, 0, len(text)
    while True:
        m = _BREAK_WORD.search(text, pos)
        if m is None:
            parts.append(text[start:])
            return parts
        left, right = m.start(), m.end()
        while left > start and text[left - 1].isspace():  # re's \s is str.isspace
            left -= 1
        while right < n and text[right].isspace():
            right += 1
        parts.append(text[start:left])
        start = pos = right


def split_weight(sub: str) -> tuple[str, Optional[str]]:
    """SUBPROMPT_WEIGHT's groups for one AND sub-prompt: its text and its trailing ':weight' (or None)."""
    body = sub.rstrip()
    colon = body.rfind(":")
    if colon >= 0 and _WEIGHT.fullmatch(body[colon + 1 :].lstrip()):
        return body[:colon].rstrip(), body[colon + 1 :].lstrip()
    return body, None


# --- prompt editing / alternation ---------------------------------------------------------------

_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_PLAIN = re.compile(r"(?:[^\\\[\]():|]|\\.)+", re.S)
_STRAY = "[]():"


@dataclass
class _Scheduled:
    before: Optional[list]
    after: list
    number: str
    when: int = 0


@dataclass
class _Alternate:
    options: list


_Node = Union[str, _Scheduled, _Alternate, list]


class _Fail(Exception):
    pass


class _ScheduleParser:
    """Recursive descent with backtracking over the WebUI's prompt-editing grammar.

    Nested prompts may not contain unmatched brackets; at the top level an unmatched bracket or
    colon is literal text. A `|` outside an alternation, or a trailing lone backslash, makes the
    whole prompt unparseable, and the WebUI then uses it unscheduled.
    """

    def __init__(self, text: str):
        self.s = text
        self.depth = 0
        # a bracket is tried as scheduling, alternation and emphasis, each parsing what it holds: without the
        # memo, nested brackets take time exponential in their depth
        self._items: dict[int, object] = {}
        self._prompts: dict[int, tuple[list, int]] = {}

    def parse(self) -> list:
        s, i, out = self.s, 0, []
        while i < len(s):
            got = self._item(i)
            if got is not None:
                node, i = got
                out.append(node)
            elif s[i] in _STRAY:
                out.append(s[i])
                i += 1
            else:
                raise _Fail
        return out

    def _prompt(self, i: int) -> tuple[list, int]:
        if i in self._prompts:
            return self._prompts[i]
        start = i
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise _Fail
        out = []
        while i < len(self.s):
            got = self._item(i)
            if got is None:
                break
            node, i = got
            out.append(node)
        self.depth -= 1
        self._prompts[start] = (out, i)
        return out, i

    def _item(self, i: int):
        if i not in self._items:
            self._items[i] = self._parse_item(i)
        return self._items[i]

    def _parse_item(self, i: int):
        s = self.s
        m = _PLAIN.match(s, i)
        if m:
            return m.group(0), m.end()
        c = s[i]
        if c == "[":
            return self._scheduled(i) or self._alternate(i) or self._emphasized(i, "[", "]", allow_weight=False)
        if c == "(":
            return self._emphasized(i, "(", ")", allow_weight=True)
        return None

    def _emphasized(self, i, open_, close, allow_weight):
        s = self.s
        inner, j = self._prompt(i + 1)
        if j < len(s) and s[j] == close:
            return [open_, inner, close], j + 1
        if allow_weight and j < len(s) and s[j] == ":":
            weight, k = self._prompt(j + 1)
            if k < len(s) and s[k] == close:
                return [open_, inner, ":", weight, close], k + 1
        return None

    def _number_end(self, i):
        """`[ws] NUMBER [ws] ]` from i; returns (number, index after ']') or None."""
        s = self.s
        while i < len(s) and s[i].isspace():
            i += 1
        m = _NUMBER.match(s, i)
        if not m:
            return None
        j = m.end()
        while j < len(s) and s[j].isspace():
            j += 1
        if j < len(s) and s[j] == "]":
            return m.group(0), j + 1
        return None

    def _scheduled(self, i):
        s = self.s
        first, j = self._prompt(i + 1)
        if j >= len(s) or s[j] != ":":
            return None
        got = self._number_end(j + 1)
        if got is not None:
            return _Scheduled(None, first, got[0]), got[1]
        second, k = self._prompt(j + 1)
        if k < len(s) and s[k] == ":":
            got = self._number_end(k + 1)
            if got is not None:
                return _Scheduled(first, second, got[0]), got[1]
        return None

    def _alternate(self, i):
        s = self.s
        first, j = self._prompt(i + 1)
        options = [first]
        while j < len(s) and s[j] == "|":
            nxt, j = self._prompt(j + 1)
            options.append(nxt)
        if len(options) > 1 and j < len(s) and s[j] == "]":
            return _Alternate(options), j + 1
        return None


def _walk(nodes, fn):
    for n in nodes:
        if isinstance(n, list):
            _walk(n, fn)
        elif isinstance(n, _Scheduled):
            fn(n)
            if n.before is not None:
                _walk(n.before, fn)
            _walk(n.after, fn)
        elif isinstance(n, _Alternate):
            fn(n)
            for o in n.options:
                _walk(o, fn)


def _render(nodes, step: int) -> str:
    out = []
    for n in nodes:
        if isinstance(n, str):
            out.append(n)
        elif isinstance(n, list):
            out.append(_render(n, step))
        elif isinstance(n, _Scheduled):
            if step <= n.when:
                if n.before is not None:
                    out.append(_render(n.before, step))
            else:
                out.append(_render(n.after, step))
        else:
            out.append(_render(n.options[(step - 1) % len(n.options)], step))
    return "".join(out)


def prompt_schedule(
    prompt: str, steps: int, hires_steps: Optional[int] = None, use_old_scheduling: bool = False
) -> Schedule:
    """The texts one prompt takes over the sampling steps, as [(end_at_step, text), ...].

    Integer step numbers are absolute, fractions (with a '.') are of the pass's steps; with hires
    steps, numbers count on from the first pass (12 = 2 steps into hires after 10, 1.5 = halfway
    through hires), unless the WebUI's old scheduling is on.
    """
    if hires_steps is None or use_old_scheduling:
        int_offset, flt_offset, total = 0, 0.0, steps
    else:
        int_offset, flt_offset, total = steps, 1.0, hires_steps
    try:
        tree = _ScheduleParser(prompt).parse()
    except _Fail:
        return [(total, prompt)]
    points = {total}

    def collect(node):
        if isinstance(node, _Alternate):
            points.update(range(1, total + 1))
            return
        v = float(node.number)
        if use_old_scheduling:
            v = v * total if v < 1 else v
        elif "." in node.number:
            v = (v - flt_offset) * total
        else:
            v = v - int_offset
        node.when = min(total, int(v))
        if node.when >= 1:
            points.add(node.when)

    _walk(tree, collect)
    return [(step, _render(tree, step)) for step in sorted(points)]


def has_scheduling(prompt: str) -> bool:
    """Whether the prompt uses prompt editing ``[a:b:N]`` or alternation ``[a|b]`` (a prompt the WebUI cannot
    parse has neither: it is used unscheduled)."""
    try:
        tree = _ScheduleParser(prompt).parse()
    except _Fail:
        return False
    found: list[Union[_Scheduled, _Alternate]] = []
    _walk(tree, found.append)
    return bool(found)


def text_at_step(schedule: Schedule, step: int) -> str:
    """The WebUI's rule: the first entry whose end_at_step >= step; the first entry if none is."""
    for end, text in schedule:
        if step <= end:
            return text
    return schedule[0][1]


# --- AND and emphasis ----------------------------------------------------------------------------


def split_and(prompt: str) -> list[tuple[str, float]]:
    """Sub-prompts of a positive prompt and their weights: 'a AND b:0.5' -> [('a', 1.0), (' b', 0.5)]."""
    out = []
    for sub in AND_SEPARATOR.split(prompt):
        text, weight = split_weight(sub)
        out.append((text, float(weight) if weight is not None else 1.0))
    return out


_ATTENTION_TOKEN = re.compile(
    r"\\\(|\\\)|\\\[|\\]|\\\\|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:",
    re.X,
)
ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1


def parse_attention(text: str) -> list[Segment]:
    """Emphasis segments of a text: '(a) b [c]' -> [('a', 1.1), (' b ', 1.0), ('c', 1/1.1)].

    `(x)` x1.1, `(x:w)` xw, `[x]` /1.1, nested brackets multiply, unclosed brackets apply to the
    end, `\\(` etc. are literal; BREAK becomes a ("BREAK", -1) marker. Runs of equal weight merge.
    """
    segments: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []
    ranges: list[tuple[int, int, float]] = []  # (first segment, end, factor), in the order the WebUI applies them

    def scale(start: int, factor: float) -> None:
        ranges.append((start, len(segments), factor))

    for m in _ATTENTION_TOKEN.finditer(text):
        tok, weight = m.group(0), m.group(1)
        if tok.startswith("\\"):
            segments.append([tok[1:], 1.0])
        elif tok == "(":
            round_open.append(len(segments))
        elif tok == "[":
            square_open.append(len(segments))
        elif weight is not None and round_open:
            scale(round_open.pop(), float(weight))
        elif tok == ")" and round_open:
            scale(round_open.pop(), ROUND_MULTIPLIER)
        elif tok == "]" and square_open:
            scale(square_open.pop(), SQUARE_MULTIPLIER)
        else:
            for k, part in enumerate(split_break(tok)):
                if k:
                    segments.append(list(BREAK_MARK))
                segments.append([part, 1.0])
    for start in round_open:
        scale(start, ROUND_MULTIPLIER)
    for start in square_open:
        scale(start, SQUARE_MULTIPLIER)
    for seg, factor in zip(segments, _range_products(len(segments), ranges), strict=True):
        seg[1] *= factor
    if not segments:
        segments = [["", 1.0]]
    merged: list[tuple[list[str], float]] = [([segments[0][0]], segments[0][1])]  # texts joined once, at the end
    for text, weight in segments[1:]:
        if weight == merged[-1][1]:
            merged[-1][0].append(text)
        else:
            merged.append(([text], weight))
    return [("".join(texts), w) for texts, w in merged]


def _range_products(n: int, ranges: list[tuple[int, int, float]]) -> list[float]:
    """For each of n items, the product of the factors of the ranges [start, end) that hold it.

    The WebUI multiplies every item of each range in turn, which takes time (items x brackets); a
    tree of factors over the items gives each range O(log n) nodes. Products may differ from the
    WebUI's in the last bits (another order of multiplication).
    """
    size = 1
    while size < n:
        size *= 2
    tree = [1.0] * (2 * size)
    for start, end, factor in ranges:
        lo, hi = start + size, end + size
        while lo < hi:
            if lo & 1:
                tree[lo] *= factor
                lo += 1
            if hi & 1:
                hi -= 1
                tree[hi] *= factor
            lo //= 2
            hi //= 2
    out = []
    for i in range(n):
        node, product = i + size, 1.0
        while node:
            product *= tree[node]
            node //= 2
        out.append(product)
    return out


class BuiltinPromptSyntax:
    """The WebUI's prompt semantics, for use without a WebUI (and as the reference in tests)."""

    def schedules(self, prompts, steps, hires_steps=None, use_old_scheduling=False):
        memo: dict[str, Schedule] = {}
        for p in prompts:
            if p not in memo:
                memo[p] = prompt_schedule(p, steps, hires_steps, use_old_scheduling)
        return [memo[p] for p in prompts]

    def sub_prompts(self, prompts):
        return [split_and(p) for p in prompts]

    def parse_attention(self, text):
        return parse_attention(text)
