"""The WebUI's extra-network activation (A1111 1.10 modules/extra_networks.py; Forge and reForge keep it):

* `parse_prompt` takes every `<name:arg1:arg2…>` tag out of a prompt, grouped by network name, in order;
* `parse_prompts` does so for a batch, and keeps the tags of the FIRST prompt only (the batch shares one
  activation);
* `activate` calls each registered network's `activate(p, params_list)` with its tags, then every other
  registered network with an empty list (a new call replaces the previous one completely); unknown names are
  skipped; errors are reported, not raised; then the scripts' `after_extra_networks_activate`.

`FakeLora` stands in for the built-in Lora extension: it records what each activation asked for (name and
text-encoder/U-Net multipliers, the Lora extension's reading of `<lora:name:te[:unet]>`).
"""

import re
from collections import defaultdict

from modules import errors

extra_network_registry = {}
re_extra_net = re.compile(r"<(\w+):([^>]+)>")


class ExtraNetworkParams:
    def __init__(self, items=None):
        self.items = items or []
        self.positional = [i for i in self.items if not (isinstance(i, str) and len(i.split("=", 2)) == 2)]
        self.named = dict(i.split("=", 1) for i in self.items if isinstance(i, str) and len(i.split("=", 2)) == 2)

    def __eq__(self, other):
        return self.items == other.items

    def __repr__(self):
        return f"ExtraNetworkParams({self.items!r})"


class ExtraNetwork:
    def __init__(self, name):
        self.name = name

    def activate(self, p, params_list):
        raise NotImplementedError

    def deactivate(self, p):
        raise NotImplementedError


class FakeLora(ExtraNetwork):
    def __init__(self):
        super().__init__("lora")
        self.activations = []  # one list of (name, te_multiplier, unet_multiplier) per activate() call
        self.deactivations = 0

    def activate(self, p, params_list):
        loaded = []
        for params in params_list:
            name = params.positional[0]
            te = float(params.positional[1]) if len(params.positional) > 1 else 1.0
            unet = float(params.positional[2]) if len(params.positional) > 2 else te
            loaded.append((name, te, unet))
        self.activations.append(loaded)
        if loaded:
            p.extra_generation_params["Lora hashes"] = ", ".join(f"{name}: 0123abcd" for name, _, _ in loaded)

    def deactivate(self, p):
        self.deactivations += 1


def register_extra_network(network):
    extra_network_registry[network.name] = network


def parse_prompt(prompt):
    found = defaultdict(list)

    def take(m):
        found[m.group(1)].append(ExtraNetworkParams(items=m.group(2).split(":")))
        return ""

    return re_extra_net.sub(take, prompt), found


def parse_prompts(prompts):
    stripped, first = [], None
    for prompt in prompts:
        text, data = parse_prompt(prompt)
        if first is None:
            first = data
        stripped.append(text)
    return stripped, first


def activate(p, extra_network_data):
    activated = []
    for name, params_list in (extra_network_data or {}).items():
        network = extra_network_registry.get(name)
        if network is None:
            continue  # the WebUI logs "Skipping unknown extra network"
        try:
            network.activate(p, params_list)
            activated.append(network)
        except Exception:
            errors.report(f"activating extra network {name} with arguments {params_list}", exc_info=True)
    for network in extra_network_registry.values():
        if network not in activated:
            try:
                network.activate(p, [])
            except Exception:
                errors.report(f"activating extra network {network.name}", exc_info=True)
    if p.scripts is not None:
        p.scripts.after_extra_networks_activate(
            p,
            batch_number=p.iteration,
            prompts=p.prompts,
            seeds=p.seeds,
            subseeds=p.seeds,
            extra_network_data=extra_network_data,
        )


def deactivate(p, extra_network_data):
    for network in extra_network_registry.values():
        try:
            network.deactivate(p)
        except Exception:
            errors.report(f"deactivating extra network {network.name}", exc_info=True)


register_extra_network(FakeLora())
