import torch

device = torch.device("cpu")
cpu = torch.device("cpu")
dtype = torch.float32
gc_calls = 0


def torch_gc():
    global gc_calls
    gc_calls += 1


def autocast(disable=False):
    # the WebUI's autocast is a no-op on CPU at float32, as here
    import contextlib

    return contextlib.nullcontext()
