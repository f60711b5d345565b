import torch

device = torch.device("cpu")
cpu = torch.device("cpu")
dtype = torch.float32
gc_calls = 0


def torch_gc():
    global gc_calls
    gc_calls += 1
