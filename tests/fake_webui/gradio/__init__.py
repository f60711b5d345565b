"""Just enough of gradio for a script's ui(): components keep their constructor arguments."""

created = []  # every component made, in order (tests find buttons by elem_id here)
warnings = []  # messages shown with gr.Warning (a toast in the browser)


class Block:
    def __init__(self, *args, **kwargs):
        created.append(self)
        self.kwargs = kwargs
        self.value = kwargs.get("value", args[0] if args else None)
        self.load_fn = None
        if callable(self.value):  # as gradio does: evaluated now, and again at every page load
            self.load_fn = self.value
            self.value = self.value()
        self.label = kwargs.get("label")
        self.choices = kwargs.get("choices")
        self.elem_id = kwargs.get("elem_id")
        self.handlers = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def click(self, fn=None, inputs=None, outputs=None, **kwargs):
        self.handlers.append((fn, inputs, outputs))

    change = click


class Checkbox(Block):
    pass


class Dropdown(Block):
    pass


class Radio(Block):
    pass


class Slider(Block):
    pass


class Textbox(Block):
    pass


class Button(Block):
    pass


class Row(Block):
    pass


class Column(Block):
    pass


class Group(Block):
    pass


class Accordion(Block):
    pass


class HTML(Block):
    pass


class Markdown(Block):
    pass


class State(Block):
    """Per-browser-session value: not shown, passed to and returned from handlers."""


def Warning(message=""):  # gradio's name
    warnings.append(message)


def update(**kwargs):
    return {"__type__": "update", **kwargs}
