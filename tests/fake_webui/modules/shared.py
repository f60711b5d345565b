"""shared: opts (with add_option), cmd_opts, state, sd_model."""

from types import SimpleNamespace


class OptionInfo:
    def __init__(
        self, default=None, label="", component=None, component_args=None, onchange=None, section=None, **kwargs
    ):
        self.default = default
        self.label = label
        self.component = component
        self.component_args = component_args
        self.section = section
        self.comment = None

    def info(self, text):
        self.comment = text
        return self


class Options:
    def __init__(self):
        object.__setattr__(self, "data", {})
        object.__setattr__(self, "data_labels", {})

    def add_option(self, key, info):
        self.data_labels[key] = info
        self.data.setdefault(key, info.default)

    def __getattr__(self, key):
        if key in self.data:
            return self.data[key]
        if key in self.data_labels:
            return self.data_labels[key].default
        raise AttributeError(key)

    def __setattr__(self, key, value):
        self.data[key] = value


opts = Options()
for _key, _value in {
    "use_old_scheduling": False,
    "skip_early_cond": 0.0,
    "s_min_uncond_all": False,
    "persistent_cond_cache": True,
    "enable_quantization": False,
    "pad_cond_uncond": False,
    "pad_cond_uncond_v0": False,
    "batch_cond_uncond": True,
}.items():
    opts.data[_key] = _value

cmd_opts = SimpleNamespace(lowvram=False, medvram=False, ella_dir=None)


class State:
    def __init__(self):
        self.reset()

    def reset(self):
        self.interrupted = False
        self.skipped = False
        self.stopping_generation = False
        self.sampling_step = 0
        self.sampling_steps = 0
        self.job_count = 0
        self.textinfo = None

    def interrupt(self):
        self.interrupted = True


state = State()
sd_model = None
device = "cpu"

from modules.fake_backends import A1111 as _A1111  # noqa: E402

backend = _A1111  # fake-only knob: which WebUI the fake behaves like (modules.fake_backends)


def apply_styles(prompt, styles):
    """Styles append their text to the prompt, as the WebUI's default '{prompt}, style' styles do."""
    return ", ".join([prompt, *styles]) if styles else prompt
