"""Stands in for Regional Prompter's scripts/attention.py: the module whose TOKENSCON (the tokens of one
region unit) its hooked cross-attention reads when it cuts the context (attention.py:15,188,216)."""

TOKENSCON = 77
TOKENS = 75


def hook_forwards(rp, p, remove=False):
    """RP hooks every attn2 module; the fake hooks the fake U-Net and records each call's cut."""
    model = p.sd_model
    if remove:
        model.__dict__.pop("apply_model", None)
        return
    unet = type(model).apply_model.__get__(model)

    def hooked(x, t, context):
        unit = TOKENSCON
        rp.calls.append({"unit": unit, "context": context.detach().clone(), "t": t.detach().clone()})
        return unet(x, t, context)

    model.apply_model = hooked
