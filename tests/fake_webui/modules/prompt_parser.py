"""The WebUI's prompt_parser API. Parsing delegates to ella_ext's built-in parser (whose parity with
the real lark grammar is tested in tests/test_prompt_syntax.py); the conditioning data structures
and their step lookup follow the WebUI's semantics."""

from collections import namedtuple

import torch

from ella_ext import prompt_syntax as _ps

ScheduledPromptConditioning = namedtuple("ScheduledPromptConditioning", ["end_at_step", "cond"])


class SdConditioning(list):
    def __init__(self, prompts, is_negative_prompt=False, width=None, height=None, copy_from=None, **kwargs):
        super().__init__(prompts)
        self.is_negative_prompt = is_negative_prompt


def get_learned_conditioning_prompt_schedules(prompts, base_steps, hires_steps=None, use_old_scheduling=False):
    return [
        [[end, text] for end, text in _ps.prompt_schedule(p, base_steps, hires_steps, use_old_scheduling)]
        for p in prompts
    ]


def parse_prompt_attention(text):
    return [[t, w] for t, w in _ps.parse_attention(text)]


def get_multicond_prompt_list(prompts):
    res_indexes, flat, index_of = [], [], {}
    for prompt in prompts:
        indexes = []
        for text, weight in _ps.split_and(prompt):
            if text not in index_of:
                index_of[text] = len(flat)
                flat.append(text)
            indexes.append((index_of[text], weight))
        res_indexes.append(indexes)
    return res_indexes, flat, index_of


class DictWithShape(dict):
    @property
    def shape(self):
        return self["crossattn"].shape


def get_learned_conditioning(model, prompts, steps, hires_steps=None, use_old_scheduling=False):
    schedules = get_learned_conditioning_prompt_schedules(prompts, steps, hires_steps, use_old_scheduling)
    out = []
    for schedule in schedules:
        conds = model.get_learned_conditioning([text for _, text in schedule])
        if isinstance(conds, dict):
            conds = [{k: v[i] for k, v in conds.items()} for i in range(len(schedule))]
        out.append([ScheduledPromptConditioning(end, conds[i]) for i, (end, _) in enumerate(schedule)])
    return out


class ComposableScheduledPromptConditioning:
    def __init__(self, schedules, weight=1.0):
        self.schedules = schedules
        self.weight = weight


class MulticondLearnedConditioning:
    def __init__(self, shape, batch):
        self.shape = shape
        self.batch = batch


def get_multicond_learned_conditioning(model, prompts, steps, hires_steps=None, use_old_scheduling=False):
    res_indexes, flat, _ = get_multicond_prompt_list(prompts)
    learned = get_learned_conditioning(model, flat, steps, hires_steps, use_old_scheduling)
    batch = [[ComposableScheduledPromptConditioning(learned[i], w) for i, w in idx] for idx in res_indexes]
    return MulticondLearnedConditioning(shape=(len(prompts),), batch=batch)


def _at(schedule, step):
    for entry in schedule:
        if step <= entry.end_at_step:
            return entry.cond
    return schedule[0].cond


def _stack(tensors):
    if isinstance(tensors[0], dict):
        return DictWithShape({k: _stack([t[k] for t in tensors]) for k in tensors[0]})
    if tensors[0].ndim == 1:
        return torch.stack(tensors)
    # rows of different chunk counts are padded with their last token, as the WebUI's stack_conds
    n = max(t.shape[0] for t in tensors)
    return torch.stack([torch.cat([t, t[-1:].repeat(n - t.shape[0], 1)]) if t.shape[0] < n else t for t in tensors])


def reconstruct_cond_batch(c, current_step):
    return _stack([_at(schedule, current_step) for schedule in c])


def reconstruct_multicond_batch(c, current_step):
    tensors, conds_list = [], []
    for composable in c.batch:
        row = []
        for prompt in composable:
            row.append((len(tensors), prompt.weight))
            tensors.append(_at(prompt.schedules, current_step))
        conds_list.append(row)
    return conds_list, _stack(tensors)
