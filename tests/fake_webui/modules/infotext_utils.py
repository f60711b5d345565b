"""Generation-parameter text: written like create_infotext, parsed and pasted like connect_paste."""

import json
import re


def quote(text):
    text = str(text)
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text):
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except Exception:
        return text


def create_infotext(prompt, negative_prompt, params):
    line = ", ".join(f"{k}: {quote(v)}" for k, v in params.items() if v is not None)
    return f"{prompt}\nNegative prompt: {negative_prompt}\n{line}"


_PARAM = re.compile(r'\s*([\w ]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def parse_generation_parameters(text):
    lines = text.strip().split("\n")
    last = lines[-1]
    params = {}
    for key, value in _PARAM.findall(last):
        params[key.strip()] = unquote(value.strip())
    return params


def paste(script, params):
    """What the UI does with a script's infotext_fields on paste: {component: new value or None}."""
    out = {}
    for component, key in script.infotext_fields:
        v = key(params) if callable(key) else params.get(key)
        if v is None:
            out[component] = None
            continue
        valtype = type(component.value)
        if component.value is None:  # the WebUI converts to type(default): a None default drops the value
            out[component] = None
            continue
        if valtype is bool and v == "False":
            v = False
        elif valtype in (int, float):
            v = float(v)
        else:
            v = valtype(v)
        out[component] = v
    return out
