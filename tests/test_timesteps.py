"""The sigma -> U-Net timestep mappings against the pairs seen on running WebUIs (docs/webui_facts.md)."""

import pytest
import torch

from ella_ext.timesteps import interpolated_timestep, nearest_timestep, sd15_alphas_cumprod, sigmas_from_alphas

SIGMAS = sigmas_from_alphas(sd15_alphas_cumprod()).float()


@pytest.mark.parametrize("sigma, nearest", [(1.6156, 500), (14.6146, 999), (2.9183, 666), (0.0292, 0)])
def test_nearest_index_is_what_forge_and_reforge_give_the_unet(sigma, nearest):
    assert float(nearest_timestep(torch.tensor([sigma]), SIGMAS)[0]) == nearest


def test_a1111_interpolates_between_table_entries():
    t = float(interpolated_timestep(torch.tensor([1.6156]), SIGMAS)[0])
    assert t == pytest.approx(499.5, abs=0.05) and t != int(t)
    # at a table entry both mappings agree, and they keep the input's shape
    exact = SIGMAS[[10, 500, 900]].reshape(3, 1)
    assert interpolated_timestep(exact, SIGMAS).shape == (3, 1)
    assert torch.allclose(interpolated_timestep(exact, SIGMAS).flatten(), torch.tensor([10.0, 500.0, 900.0]), atol=1e-3)
    assert torch.equal(nearest_timestep(exact, SIGMAS).flatten(), torch.tensor([10.0, 500.0, 900.0]))
