"""Bad input, faults, concurrency and fuzzing: ELLA never takes the WebUI down, leaks state, or mixes jobs.

The matrix of what is tried here (and in test_tsc / test_t5 / test_discovery) is in tests/README.md.
"""

import gc
import os
import shutil
import struct
import threading

import factories
import pytest
import torch
import webui_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from webui_env import MODEL_NAME, T5_NAME, ella, payload, run

from ella_ext import ELLAError
from ella_ext.args import ELLAArgs
from ella_ext.discovery import ModelRoots, resolve_ella_model, resolve_t5_encoder
from ella_ext.prompt_encoding import split_chunks
from ella_ext.prompt_syntax import (
    BuiltinPromptSyntax,
    parse_attention,
    prompt_schedule,
    split_and,
    strip_extra_networks,
)

pytestmark = pytest.mark.usefixtures("fresh_webui_state")


def plain_job_matches_a_fresh_webui(webui, **kw):
    """A job without ELLA gives the same image and the same U-Net inputs as on a WebUI that never saw ELLA."""
    from modules import processing

    model = webui.model()
    status, body = run(webui, payload(**kw))
    assert status == 200, body
    calls = [(c.t.clone(), c.context.clone()) for c in model.unet_calls]
    webui.model()
    reference = processing.process_images(processing.StableDiffusionProcessingTxt2Img(**payload(**kw)))
    assert torch.equal(body["images"][0], reference.images[0])
    assert all(ctx.shape[1] == 77 for _, ctx in calls)


def ella_job_works(webui, prompt="a red cube on a glossy table"):
    model = webui.model()
    status, body = run(webui, payload(prompt) | {"alwayson_scripts": ella()})
    assert status == 200, body
    call = model.unet_calls[0]
    expected = webui_env.reference_conditioning(webui.models_dir, prompt, float(call.t[0]))
    assert torch.allclose(call.context[0], expected, atol=1e-4)
    return body


def no_job_state_left(webui):
    from ella_ext.webui.job import ELLAJob

    gc.collect()
    # type() rather than isinstance(): isinstance on every gc object trips deprecated module proxies
    assert not [o for o in gc.get_objects() if type(o) is ELLAJob]
    api_p = getattr(webui.api(), "last_p", None)
    assert api_p is None or not hasattr(api_p, "_ella_job")


# --- 1. files through the WebUI ---------------------------------------------------------------------


@pytest.fixture
def bad_models(webui):
    """Broken files placed next to the good ones, removed afterwards."""
    ella_dir = webui.models_dir / "ELLA"
    made = []

    def put(name, data):
        path = ella_dir / name
        path.write_bytes(data)
        made.append(path)
        return path

    def t5(name, drop=()):
        folder = ella_dir / "t5" / name
        shutil.copytree(ella_dir / "t5" / T5_NAME, folder)
        for f in drop:
            (folder / f).unlink()
        made.append(folder)
        return folder

    yield put, t5
    for path in made:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    webui.extension.runtime.unload_all()


@pytest.mark.parametrize(
    "name, data, message",
    [
        ("zero.safetensors", b"", "empty"),
        ("random.safetensors", bytes(range(256)) * 64, "header claims"),
        ("pickle.safetensors", b"\x80\x04\x95" + b"\x00" * 64, "pickle"),
        ("huge-header.safetensors", struct.pack("<Q", 2**40) + b"{}", "header claims"),
        ("truncated.safetensors", "TRUNCATE", "truncated"),
        ("wrong-keys.safetensors", "WRONG_KEYS", "missing"),
    ],
)
def test_bad_ella_file_fails_the_job_then_good_files_work(webui, bad_models, name, data, message):
    put, _ = bad_models
    good = (webui.models_dir / "ELLA" / f"{MODEL_NAME}.safetensors").read_bytes()
    if data == "TRUNCATE":
        data = good[: len(good) // 2]
    elif data == "WRONG_KEYS":
        from safetensors.torch import save_file

        save_file({"something.else": torch.zeros(2)}, str(webui.models_dir / "ELLA" / name))
        data = (webui.models_dir / "ELLA" / name).read_bytes()
    path = put(name, data)
    model = webui.model()
    status, body = run(webui, payload() | {"alwayson_scripts": ella(model=path.stem)})
    assert status in (422, 500) and message in body["errors"] and str(path) in body["errors"]
    assert "Traceback" not in body["errors"] and model.unet_calls == []
    no_job_state_left(webui)
    ella_job_works(webui)
    plain_job_matches_a_fresh_webui(webui)


@pytest.mark.parametrize(
    "drop, message",
    [
        (("tokenizer.json", "spiece.model"), "no tokenizer"),
        (("config.json",), "config.json"),
        (("model.safetensors",), "safetensors"),
    ],
)
def test_bad_t5_folder_fails_the_job_then_good_files_work(webui, bad_models, drop, message):
    _, t5 = bad_models
    folder = t5("broken-t5", drop)
    model = webui.model()
    status, body = run(webui, payload() | {"alwayson_scripts": ella(t5="broken-t5")})
    assert status in (422, 500) and message in body["errors"] and "broken-t5" in body["errors"], body
    assert model.unet_calls == [] and folder.exists()
    ella_job_works(webui)


def test_remote_code_t5_config_is_not_honoured_in_a_job(webui, bad_models):
    import json

    _, t5 = bad_models
    folder = t5("remote-t5")
    marker = folder / "ran.txt"
    (folder / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('pwned')\n")
    config = json.loads((folder / "config.json").read_text())
    config.update(auto_map={"AutoModel": "modeling_evil.Evil"}, trust_remote_code=True)
    (folder / "config.json").write_text(json.dumps(config))
    model = webui.model()
    status, body = run(webui, payload() | {"alwayson_scripts": ella(t5="remote-t5")})
    assert not marker.exists()
    assert status == 200, body  # the weights are plain T5: the remote code is simply never run
    assert model.unet_calls[0].context.shape[1] == 64


# --- 2. names and paths through the API -----------------------------------------------------------


@pytest.mark.parametrize(
    "field, name, message",
    [
        ("model", "../../../etc/passwd", "outside the model folders"),
        ("model", "/etc/passwd", "outside the model folders"),
        ("t5", "../" + T5_NAME, "outside the model folders"),
        ("model", "bad\x00name", "NUL"),
        ("t5", "x" * 5000, "characters long"),
        ("model", 42, "must be a model name (string)"),
    ],
)
def test_names_leaving_the_model_folders_are_refused(webui, field, name, message):
    model = webui.model()
    status, body = run(webui, payload() | {"alwayson_scripts": ella(**{field: name})})
    assert status == 422 and message in body["errors"], body
    assert model.unet_calls == []


def test_symlink_out_of_the_model_folder_is_refused(webui, tmp_path):
    outside = tmp_path / "elsewhere.safetensors"
    outside.write_bytes((webui.models_dir / "ELLA" / f"{MODEL_NAME}.safetensors").read_bytes())
    link = webui.models_dir / "ELLA" / "linked.safetensors"
    link.symlink_to(outside)
    try:
        status, body = run(webui, payload() | {"alwayson_scripts": ella(model="linked")})
        assert status == 422 and "leads outside its model folder" in body["errors"]
        assert "linked" not in webui.extension.model_choices()
    finally:
        link.unlink()


def test_model_roots_resolve_only_inside(tmp_path):
    roots = ModelRoots.under(tmp_path)
    for bad in ("..", "../x", "./../x", "a/../../x", "~root/.ssh/id_rsa"):
        with pytest.raises(ELLAError):
            resolve_ella_model(bad, roots)
        with pytest.raises(ELLAError):
            resolve_t5_encoder(bad, roots)


# --- 3. prompts ----------------------------------------------------------------------------------

ALL_PLANES = "".join(
    chr(c) for c in (0x41, 0xE9, 0x3A9, 0x4E2D, 0x1F600, 0x20000, 0x30000, 0xE0041, 0xF0000, 0x10FFFD, 0x200B, 0x202E)
)

PROMPTS = {
    "empty": ("", ""),
    "whitespace": ("   \n\t ", " "),
    "10k characters": ("a red cube " * 910, "blurry " * 1430),
    "every unicode plane": (ALL_PLANES + " a cat", ALL_PLANES),
    "unbalanced": ("((a red [cube:sphere:", "[[(]):"),
    "stray syntax": ("a ] cat ) on [ a | mat :: 0.5 ]]]", "\\"),
    "only extra networks": ("<lora:film:0.8> <hypernet:x:1>", "<lora:bad:1>"),
    "only BREAK / AND": ("BREAK AND BREAK", "AND"),
    "weights out of range": ("(cat:1e30) (dog:-5) (bird:nan)", "(x:0)"),
}


@pytest.mark.parametrize("case", list(PROMPTS))
def test_odd_prompts_sample_without_crashing(webui, case):
    prompt, negative = PROMPTS[case]
    model = webui.model()
    status, body = run(webui, payload(prompt, negative_prompt=negative) | {"alwayson_scripts": ella()})
    assert status == 200, body
    assert len(model.unet_calls) == 4
    for call in model.unet_calls:
        assert call.context.shape[1] == 64 and torch.isfinite(call.context).all()
    no_job_state_left(webui)


def test_empty_prompt_is_encoded_as_an_empty_t5_prompt(webui):
    model = webui.model()
    run(webui, payload("") | {"alwayson_scripts": ella()})
    call = model.unet_calls[0]
    expected = webui_env.reference_conditioning(webui.models_dir, "", float(call.t[0]))
    assert torch.allclose(call.context[0], expected, atol=1e-4)  # T5 sees only </s>, as the reference does


def test_only_extra_network_tags_encode_as_empty(webui):
    model = webui.model()
    run(webui, payload("<lora:film:0.8>") | {"alwayson_scripts": ella()})
    call = model.unet_calls[0]
    expected = webui_env.reference_conditioning(webui.models_dir, "", float(call.t[0]))
    assert torch.allclose(call.context[0], expected, atol=1e-4)


# --- 4. lifecycle faults -------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["interrupted", "skipped"])
@pytest.mark.parametrize("phase", ["encoding", "first step", "mid-run", "hires pass"])
def test_interrupt_or_skip_at_each_phase(webui, phase, flag):
    from modules import shared

    model = webui.model()
    runtime = webui.extension.runtime
    original_encoder = runtime.text_encoder
    original_apply = model.apply_model

    fired = []

    def encoder_then_stop(folder):
        fired.append("encode")
        setattr(shared.state, flag, True)
        return original_encoder(folder)

    def unet_then_stop(x, t, context):
        n = len(model.unet_calls)
        if (phase == "first step" and n == 0) or (phase == "mid-run" and n == 2) or (phase == "hires pass" and n == 4):
            fired.append(n)
            setattr(shared.state, flag, True)
        return original_apply(x, t, context)

    if phase == "encoding":
        runtime.unload_all()
        runtime.feature_cache.clear()
        runtime.text_encoder = encoder_then_stop
    model.apply_model = unet_then_stop
    try:
        p = payload(n_iter=2, enable_hr=phase == "hires pass", hr_second_pass_steps=4, hr_cfg=7.0)
        status, body = run(webui, p | {"alwayson_scripts": ella()})
    finally:
        runtime.__dict__.pop("text_encoder", None)
    assert status == 200, body  # an interrupt is the user's choice, not an error
    assert fired, "the interrupt was never raised at this phase"
    if flag == "interrupted":
        assert len(model.unet_calls) == {"encoding": 0, "first step": 1, "mid-run": 3, "hires pass": 5}[phase]
    assert all(c.context.shape[1] == 64 for c in model.unet_calls)  # whatever ran, ran with ELLA
    no_job_state_left(webui)
    plain_job_matches_a_fresh_webui(webui)
    ella_job_works(webui)


def test_unet_exception_at_each_step_then_clean(webui):
    for at in (0, 1, 3):
        model = webui.model()
        model.fail_at_unet_call = at
        status, body = run(webui, payload() | {"alwayson_scripts": ella()})
        assert status == 500 and "simulated U-Net failure" in body["errors"]
        no_job_state_left(webui)
    plain_job_matches_a_fresh_webui(webui)
    ella_job_works(webui)


def test_checkpoint_switch_between_jobs(webui):
    from modules import shared

    ella_job_works(webui)
    model = webui.model()
    model.sd_checkpoint_info.title = "another-sd15-finetune.safetensors [89abcdef]"
    assert shared.sd_model is model
    ella_job_works(webui)
    plain_job_matches_a_fresh_webui(webui)


def test_sdxl_then_back_to_sd15(webui):
    sdxl = webui.model("sdxl")
    status, body = run(webui, payload() | {"alwayson_scripts": ella()})
    assert status == 422 and "SDXL" in body["errors"] and sdxl.unet_calls == []
    # (the fake's SDXL cannot sample dict conditionings, so no plain SDXL job here)
    no_job_state_left(webui)
    plain_job_matches_a_fresh_webui(webui)
    ella_job_works(webui)


# --- 5. concurrency and long runs ------------------------------------------------------------------


def test_two_api_clients_never_mix_prompts(webui):
    """Two clients post different ELLA prompts at once; the WebUI serialises jobs with its queue lock."""
    from modules import shared

    queue_lock = threading.Lock()  # modules.call_queue.queue_lock
    prompts = {
        "A": [f"a red cube number {i}" for i in range(5)],
        "B": [f"a blue sphere under a tree {i}" for i in range(5)],
    }
    seen = {"A": [], "B": []}
    errors = []

    def client(name):
        try:
            for prompt in prompts[name]:
                with queue_lock:
                    model = webui.model()
                    status, body = run(webui, payload(prompt) | {"alwayson_scripts": ella()})
                    assert status == 200, body
                    seen[name].append((prompt, float(model.unet_calls[0].t[0]), model.unet_calls[0].context[0].clone()))
                    assert shared.sd_model is model
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in ("A", "B")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for name in ("A", "B"):
        assert [p for p, _, _ in seen[name]] == prompts[name]
        for prompt, t, ctx in seen[name]:
            assert torch.allclose(ctx, webui_env.reference_conditioning(webui.models_dir, prompt, t), atol=1e-4), (
                name,
                prompt,
            )


def test_prompt_encoder_shared_by_threads_keeps_prompts_apart(webui):
    """The feature cache and T5 are shared by all jobs; concurrent encodes must not swap results."""
    from ella_ext.lru_cache import LRUCache
    from ella_ext.prompt_encoding import PromptEncoder
    from ella_ext.t5 import load_t5_encoder

    t5 = load_t5_encoder(webui.models_dir / "ELLA" / "t5" / T5_NAME, precision="fp32")
    cache = LRUCache(max_entries=8)  # small: threads evict each other's entries
    texts = factories.dpg_prompts(24)
    expected = {t: t5.encode(t5.tokenize(t))[0] for t in texts}
    encoder = PromptEncoder(
        lambda: t5, "t5", cache, BuiltinPromptSyntax(), fixed_length=None, truncate_at=None, emphasis="original"
    )
    bad = []

    def worker(offset):
        for i in range(60):
            text = texts[(i * 5 + offset) % len(texts)]
            if not torch.equal(encoder.encode(text).features, expected[text]):
                bad.append(text)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert bad == [] and len(cache) <= 8


def test_200_jobs_do_not_grow_state(webui):
    import tracemalloc

    from modules import script_callbacks

    callbacks_before = len(script_callbacks.callbacks_cfg_denoiser)
    runtime = webui.extension.runtime
    prompts = factories.dpg_prompts(400)
    tracemalloc.start()
    try:
        sizes = []
        for i in range(200):
            webui.model()
            enabled = i % 4 != 3  # some jobs without ELLA in between
            p = payload(prompts[i], steps=2) | ({"alwayson_scripts": ella()} if enabled else {})
            status, body = run(webui, p)
            assert status == 200, body
            if i in (49, 199):
                gc.collect()
                sizes.append(tracemalloc.get_traced_memory()[0])
    finally:
        tracemalloc.stop()
    growth_mb = (sizes[1] - sizes[0]) / 2**20
    assert growth_mb < 8, f"Python allocations grew {growth_mb:.1f} MB from job 50 to job 200"
    assert len(runtime.feature_cache) <= runtime.settings.cache_entries
    assert len(script_callbacks.callbacks_cfg_denoiser) == callbacks_before
    no_job_state_left(webui)


# --- 6. fuzzing ------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)
field_names = st.sampled_from(ELLAArgs.field_names() + ["bogus", "", "Enabled"])
arg_dicts = st.dictionaries(
    field_names,
    json_values
    | st.sampled_from(
        ["Flexible", "Fixed 128", "ella+clip", "ELLA + CLIP", "clip", "On", "true", "0.5", "ignore", "keep", MODEL_NAME]
    ),
    max_size=10,
)
script_args = st.one_of(
    st.lists(json_values, max_size=12),
    st.tuples(arg_dicts).map(list),
    st.tuples(arg_dicts, st.lists(json_values, max_size=9)).map(lambda x: [x[0], *x[1]]),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script_args, st.sampled_from([None, True, False]))
def test_fuzz_api_arguments_raise_only_ella_errors(args, enabled):
    try:
        parsed = ELLAArgs.from_script_args(args, enabled=enabled)
    except ELLAError as exc:
        assert str(exc) and "Traceback" not in str(exc)
        return
    assert isinstance(parsed, ELLAArgs)
    assert parsed.length in ("flexible", "fixed") and 0.0 <= parsed.start < parsed.end <= 1.0


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "ELLA",
                "ELLA T5",
                "ELLA length",
                "ELLA mode",
                "ELLA negative",
                "ELLA steps",
                "ELLA emphasis",
                "ELLA long prompts",
                "ELLA truncated",
                "Steps",
            ]
        ),
        st.text(max_size=30) | st.integers() | st.floats() | st.booleans(),
        max_size=8,
    )
)
def test_fuzz_infotext_raises_only_ella_errors(params):
    try:
        args = ELLAArgs.from_infotext(params)
    except ELLAError:
        return
    assert isinstance(args, ELLAArgs)


prompt_text = st.lists(
    st.sampled_from(
        list("ab c()[]:|\\<>.,0123456789-eE")
        + ["AND", "BREAK", " AND ", " BREAK ", "<lora:x:1>", "\u00e9", "\U0001f600"]
    ),
    max_size=40,
).map("".join)


@settings(max_examples=600, deadline=None)
@given(prompt_text, st.integers(1, 40), st.one_of(st.none(), st.integers(1, 20)), st.booleans())
def test_fuzz_prompt_parsing_never_raises(prompt, steps, hires, old):
    schedule = prompt_schedule(prompt, steps, hires, old)
    total = hires if hires is not None and not old else steps
    assert schedule and schedule[-1][0] == total and all(isinstance(t, str) for _, t in schedule)
    assert [end for end, _ in schedule] == sorted({end for end, _ in schedule})
    for text, weight in split_and(strip_extra_networks(prompt)):
        segments = parse_attention(text)
        assert all(isinstance(s, str) and isinstance(w, float) for s, w in segments)
        chunks = split_chunks(text, BuiltinPromptSyntax(), use_weights=True)
        for chunk in chunks:
            for start, end, w in chunk.spans:
                assert 0 <= start < end <= len(chunk.text)
        assert len(chunks) == 1 + sum(1 for seg in segments if seg == ("BREAK", -1.0))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_fuzz_model_names_raise_only_ella_errors(tmp_path_factory, name):
    roots = ModelRoots.under(tmp_path_factory.getbasetemp())
    for resolve in (resolve_ella_model, resolve_t5_encoder):
        try:
            path = resolve(name, roots)
        except ELLAError:
            continue
        assert os.path.realpath(path).startswith(os.path.realpath(tmp_path_factory.getbasetemp()))
