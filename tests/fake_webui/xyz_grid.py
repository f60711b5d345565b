"""The XYZ plot script's extension surface: AxisOption and the module-level axis_options list."""


class AxisOption:
    def __init__(self, label, type, apply, format_value=None, confirm=None, cost=0.0, choices=None, prepare=None):
        self.label = label
        self.type = type
        self.apply = apply
        self.format_value = format_value
        self.confirm = confirm
        self.cost = cost
        self.choices = choices
        self.prepare = prepare


axis_options = [
    AxisOption("Nothing", str, lambda p, x, xs: None),
    AxisOption("Seed", int, lambda p, x, xs: setattr(p, "seed", x)),
]


class Script:
    pass


Script.__module__ = "xyz_grid.py"  # the WebUI's loader names script modules by file name
