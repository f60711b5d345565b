"""The TSC computes the authors' function (fixtures), loads strictly, and batches exactly."""

import json
import struct

import factories
import pytest
import torch
from safetensors.torch import load_file, save_file

from ella_ext import DeviceError, ModelFileError, load_ella
from ella_ext.tsc import TSCConfig

TOLERANCE = 1e-4  # fixtures README: max |y - y_ref| <= 1e-4 * max |y_ref| in fp32


@pytest.fixture(scope="module")
def small(fixtures_dir):
    return load_ella(fixtures_dir / "ella_small_weights.safetensors")


@pytest.fixture(scope="module")
def expected(fixtures_dir):
    return load_file(str(fixtures_dir / "ella_small_expected.safetensors"))


def rel_err(y, ref):
    return ((y - ref).abs().max() / ref.abs().max()).item()


@pytest.mark.parametrize("case", range(4))
def test_matches_reference_fixture(small, expected, case):
    x, t, y = expected[f"case{case}.x"], expected[f"case{case}.t"], expected[f"case{case}.y"]
    out = small(x, t)
    assert out.shape == y.shape == (x.shape[0], 16, 64)
    err = rel_err(out, y)
    print(f"case{case} {tuple(x.shape)} t={t.tolist()} relative error {err:.2e}")
    assert err <= TOLERANCE


@pytest.mark.parametrize(
    "t", [torch.tensor(999.0), 999.0, 999, torch.tensor([999.0]), torch.tensor(999, dtype=torch.long)]
)
def test_scalar_timestep_forms(small, expected, t):
    out = small(expected["case0.x"], t)
    assert rel_err(out, expected["scalar.y"]) <= TOLERANCE


def test_config_read_off_shapes(small):
    assert small.config == TSCConfig(
        time_channel=32, time_embed_dim=64, width=64, layers=2, heads=8, num_latents=16, input_dim=48
    )


def test_released_checkpoint_layout_has_93_tensors_and_66_8m_weights():
    cfg = TSCConfig()  # the released SD1.5 sizes are the defaults
    assert len(cfg.expected_shapes()) == 93
    assert cfg.num_parameters == 66_820_608
    assert TSCConfig.from_shapes(cfg.expected_shapes()) == cfg


def test_other_sizes_load(tmp_path):
    cfg = TSCConfig(time_channel=16, time_embed_dim=24, width=32, layers=3, heads=4, num_latents=5, input_dim=20)
    factories.write_tsc(tmp_path / "v.safetensors", cfg)
    model = load_ella(tmp_path / "v.safetensors", heads=4)
    assert model.config == cfg
    assert model(torch.randn(2, 9, 20), torch.tensor([1.0, 500.0])).shape == (2, 5, 32)


def test_heads_must_divide_width(fixtures_dir):
    with pytest.raises(ModelFileError, match="heads=7"):
        load_ella(fixtures_dir / "ella_small_weights.safetensors", heads=7)


def test_timesteps_must_match_rows(small):
    with pytest.raises(ValueError, match="one entry per row"):
        small(torch.randn(3, 5, 48), torch.tensor([1.0, 2.0]))


def test_fractional_and_integer_timesteps_differ(small):
    x = torch.randn(1, 6, 48)
    assert not torch.allclose(small(x, 499.5), small(x, 500))
    assert torch.equal(small(x, 500), small(x, torch.tensor([500], dtype=torch.long)))


# --- batching -----------------------------------------------------------------------------------


def test_padded_batch_equals_each_row_alone(small):
    torch.manual_seed(1)
    rows = [torch.randn(n, 48) for n in (3, 17, 9, 1)]
    t = torch.tensor([999.0, 500.0, 12.5, 0.0])
    batch = torch.zeros(len(rows), 17, 48)
    for i, r in enumerate(rows):
        batch[i, : len(r)] = r
        batch[i, len(r) :] = 7.0  # garbage in the padding must not matter
    out = small(batch, t, lengths=[len(r) for r in rows])
    for i, r in enumerate(rows):
        alone = small(r[None], t[i])
        assert rel_err(out[i : i + 1], alone) < 1e-5


def test_fixed_length_mode_attends_padding_like_the_reference(small, expected):
    # case1 has 128 tokens per row, as the reference's fixed mode: no mask, every token attended
    x, t, y = expected["case1.x"], expected["case1.t"], expected["case1.y"]
    assert rel_err(small(x, t), y) <= TOLERANCE
    changed = x.clone()
    changed[:, 100:] = 0
    assert rel_err(small(changed, t), y) > 1e-3  # without a mask the tail tokens count
    all_true = torch.ones(x.shape[:2], dtype=torch.bool)
    assert torch.equal(small(x, t, key_mask=all_true), small(x, t))


def test_prepared_text_reused_across_steps_equals_forward(small):
    x = torch.randn(2, 11, 48)
    prepared = small.prepare_text(x, lengths=[11, 6])
    for t in (999.0, 500.0, 1.0):
        assert torch.equal(small.forward_prepared(prepared, t), small(x, t, lengths=[11, 6]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_loads_and_stays_close(fixtures_dir, expected, dtype):
    model = load_ella(fixtures_dir / "ella_small_weights.safetensors", dtype=dtype)
    assert model.dtype == dtype
    x, t, y = expected["case2.x"], expected["case2.t"], expected["case2.y"]
    out = model(x.to(dtype), t)
    assert out.dtype == dtype
    assert rel_err(out.float(), y) < 5e-2


def test_fp16_file_loads_in_fp32(tmp_path, fixtures_dir, expected):
    state = load_file(str(fixtures_dir / "ella_small_weights.safetensors"))
    save_file({k: v.half() for k, v in state.items()}, str(tmp_path / "half.safetensors"))
    model = load_ella(tmp_path / "half.safetensors")
    assert model.dtype == torch.float32
    assert rel_err(model(expected["case0.x"], 999.0), expected["scalar.y"]) < 5e-3


def test_unsupported_dtype_and_device(fixtures_dir):
    path = fixtures_dir / "ella_small_weights.safetensors"
    with pytest.raises(DeviceError, match="dtype"):
        load_ella(path, dtype=torch.int8)
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA is not available"):
            load_ella(path, device="cuda")
    with pytest.raises(DeviceError, match="not a valid torch device"):
        load_ella(path, device="warp-drive")


# --- bad files ----------------------------------------------------------------------------------


@pytest.fixture()
def good_state(fixtures_dir):
    return load_file(str(fixtures_dir / "ella_small_weights.safetensors"))


def test_missing_key_is_named(tmp_path, good_state):
    del good_state["connector.perceiver_blocks.1.ln_ff.linear.bias"]
    save_file(good_state, str(tmp_path / "m.safetensors"))
    with pytest.raises(ModelFileError, match=r"missing keys .*perceiver_blocks\.1\.ln_ff\.linear\.bias"):
        load_ella(tmp_path / "m.safetensors")


def test_unexpected_key_is_named(tmp_path, good_state):
    good_state["connector.proj_out.weight"] = torch.zeros(3, 3)
    save_file(good_state, str(tmp_path / "u.safetensors"))
    with pytest.raises(ModelFileError, match=r"unexpected keys .*proj_out"):
        load_ella(tmp_path / "u.safetensors")


def test_wrong_shape_is_named(tmp_path, good_state):
    good_state["connector.perceiver_blocks.0.mlp.c_fc.weight"] = torch.zeros(100, 64)
    save_file(good_state, str(tmp_path / "s.safetensors"))
    with pytest.raises(ModelFileError, match=r"wrong shapes .*mlp\.c_fc\.weight: \[100, 64\] != \[256, 64\]"):
        load_ella(tmp_path / "s.safetensors")


def test_not_a_tsc_at_all(tmp_path):
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2, 2)}, str(tmp_path / "sd.safetensors"))
    with pytest.raises(ModelFileError, match="not an ELLA TSC checkpoint.*time_embedding.linear_1.weight"):
        load_ella(tmp_path / "sd.safetensors")


def test_quantised_tensors_refused(tmp_path, good_state):
    good_state["connector.latents"] = good_state["connector.latents"].to(torch.int8)
    save_file(good_state, str(tmp_path / "q.safetensors"))
    with pytest.raises(ModelFileError, match="non-float"):
        load_ella(tmp_path / "q.safetensors")


def _header_file(path, header: dict, data: bytes = b""):
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


@pytest.mark.parametrize(
    "name, make, message",
    [
        ("absent.safetensors", None, "does not exist"),
        ("empty.safetensors", lambda p: p.write_bytes(b""), "empty"),
        ("short.safetensors", lambda p: p.write_bytes(b"\x01\x02"), "too short"),
        ("random.safetensors", lambda p: p.write_bytes(bytes(range(256)) * 40), "header claims"),
        ("pickle.safetensors", lambda p: p.write_bytes(b"\x80\x04\x95" + b"x" * 100), "pickle"),
        ("zip.safetensors", lambda p: p.write_bytes(b"PK\x03\x04" + b"x" * 100), "pickle"),
        ("huge.safetensors", lambda p: p.write_bytes(struct.pack("<Q", 2**40) + b"{}"), "header claims"),
        ("notjson.safetensors", lambda p: p.write_bytes(struct.pack("<Q", 4) + b"nope"), "not JSON"),
        ("list.safetensors", lambda p: p.write_bytes(struct.pack("<Q", 2) + b"[]"), "not a JSON object"),
        ("notensors.safetensors", lambda p: _header_file(p, {"__metadata__": {}}), "no tensors"),
        ("badentry.safetensors", lambda p: _header_file(p, {"a": {"dtype": "F32"}}), "malformed"),
        (
            "baddtype.safetensors",
            lambda p: _header_file(p, {"a": {"dtype": "Q4", "shape": [1], "data_offsets": [0, 1]}}, b"x"),
            "unknown dtype",
        ),
        (
            "inconsistent.safetensors",
            lambda p: _header_file(p, {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"xxxx"),
            "inconsistent",
        ),
        (
            "truncated.safetensors",
            lambda p: _header_file(p, {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"xxxx"),
            "truncated",
        ),
        ("weights.ckpt", lambda p: p.write_bytes(b"\x80\x02"), "pickle file"),
        ("weights.pt", lambda p: p.write_bytes(b"\x80\x02"), "pickle file"),
        ("weights.bin", lambda p: p.write_bytes(b"\x80\x02"), "pickle file"),
    ],
)
def test_bad_files_give_clear_errors(tmp_path, name, make, message):
    path = tmp_path / name
    if make is not None:
        make(path)
    with pytest.raises(ModelFileError, match=message) as info:
        load_ella(path)
    assert str(path) in str(info.value)


def test_truncated_real_file(tmp_path, fixtures_dir):
    data = (fixtures_dir / "ella_small_weights.safetensors").read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated"):
        load_ella(cut)


def test_directory_is_not_a_file(tmp_path):
    (tmp_path / "dir.safetensors").mkdir()
    with pytest.raises(ModelFileError, match="not a file"):
        load_ella(tmp_path / "dir.safetensors")


def test_good_file_still_loads_after_bad_ones(tmp_path, fixtures_dir, expected):
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelFileError):
        load_ella(tmp_path / "bad.safetensors")
    model = load_ella(fixtures_dir / "ella_small_weights.safetensors")
    assert rel_err(model(expected["case0.x"], 999.0), expected["scalar.y"]) <= TOLERANCE


def test_module_walks_reach_every_submodule(small):
    """nn.Module.apply (used by casting and hooking tools) works on the connector: nothing shadows it."""
    seen = []
    assert small.apply(lambda m: seen.append(type(m).__name__)) is small
    assert seen.count("AdaLayerNorm") == 3 * small.config.layers and seen[-1] == "TSC"
