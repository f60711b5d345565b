"""Realistic prompts decorated with the WebUI's syntax, for parity tests against the WebUI's parser."""

import random

import factories

SNIPPETS = [
    "[{a}:{b}:{n}]",
    "[{a}::{n}]",
    "[{a}:{n}]",
    "[{a}|{b}]",
    "[{a}|{b}|{c}]",
    "[{a}|]",
    "({a})",
    "(({a}))",
    "[{a}]",
    "({a}:{w})",
    "[({a}:{w}):{b}:{n}]",
    "[{a}:[{b}:{c}:{n2}]:{n}]",
    "\\({a}\\)",
    "{a} BREAK {b}",
    "{a} AND {b}:{w}",
    "[{a}:{b}: {n} ]",
    "({a}",
    "{a})",
    "[{a}",
    "{a}]",
    "{a}:{b}",
    "[{a}:{b}]",
    "({a}:{b})",
    "[{a}:{b}:{c}:{n}]",
    "{a} | {b}",
    "[{a}|({b}|{c})]",
    "{a}\\",
    "[{a}:{b}:{n}x]",
    "[{a}:{b}:-{n}]",
    "[{a}:{b}:1e1]",
    "({a}:{w}",
    "<lora:{a}:0.5>",
    "[[{a}:{b}:{n}]|{c}]",
    "(({a}):{w})",
    "[{a}:{b}:.{n}]",
    "[{a}:{b}:{n}.]",
    "{a} \\[{b}\\]",
    "[{a} ({b}:{w}) {c}:{n}]",
]
NUMBERS = ["1", "2", "3", "5", "8", "12", "0.25", "0.5", "0.75", ".3", "1.5", "0", "20", "0.999"]
WEIGHTS = ["1.3", "0.5", "2", "1.1", "0.8", "-1"]


def decorated_prompts(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    base = factories.dpg_prompts(200)
    out = []
    for i in range(count):
        words = rng.choice(base).split()[: rng.randint(4, 25)]
        for _ in range(rng.randint(1, 3)):
            k = rng.randrange(len(words))
            snippet = rng.choice(SNIPPETS).format(
                a=rng.choice(words),
                b=rng.choice(words),
                c=rng.choice(words),
                n=rng.choice(NUMBERS),
                n2=rng.choice(NUMBERS),
                w=rng.choice(WEIGHTS),
            )
            words[k] = snippet
        out.append(" ".join(words))
    return out


STEP_SETTINGS = [
    (4, None, False),
    (10, None, False),
    (20, None, False),
    (10, 10, False),
    (20, 6, False),
    (10, None, True),
    (10, 5, True),
    (1, None, False),
]
