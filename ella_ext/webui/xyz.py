"""ELLA's axes in the built-in XYZ plot script: one per argument row with an `xyz` label."""

from __future__ import annotations

from ..args import ARGS

OVERRIDES_ATTR = "_ella_overrides"


def xyz_override(field_name: str):
    """An XYZ `apply`: record the cell's value on (the copied) p; `process` applies it to the args."""
    row = next(r for r in ARGS if r.name == field_name)

    def apply(p, value, values):
        if row.kind is bool:
            value = row.parse_xyz(value)  # "On"/"Off"; other values are validated with the job's args in process()
        # a new dict per cell: XYZ shallow-copies p, so mutating a shared dict would leak across cells
        setattr(p, OVERRIDES_ATTR, {**(getattr(p, OVERRIDES_ATTR, None) or {}), field_name: value})

    return apply


def register_xyz_axes() -> bool:
    """Add ELLA's axes to the built-in XYZ plot script (call from on_before_ui). False if it is absent."""
    from modules import scripts

    xyz = next(
        (d.module for d in scripts.scripts_data if d.script_class.__module__ in ("xyz_grid.py", "scripts.xyz_grid")),
        None,
    )
    if xyz is None:
        return False
    have = {getattr(o, "label", None) for o in xyz.axis_options}
    for row in ARGS:
        if not row.xyz or row.xyz in have:
            continue
        choices = row.xyz_choices
        kind = float if row.kind is float else str
        xyz.axis_options.append(
            xyz.AxisOption(row.xyz, kind, xyz_override(row.name), choices=(lambda c=choices: c) if choices else None)
        )
    return True
