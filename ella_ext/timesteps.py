"""Sigma-to-timestep mappings: which timestep the U-Net receives for a sampler's sigma.

ELLA's TSC must see the timestep the U-Net receives at that call. The cfg-denoiser callback gets
`sigma`, whose meaning differs by backend and sampler (read in each WebUI's source and checked on
running WebUIs; docs/webui_facts.md has the observed pairs):

* A1111, k-diffusion samplers (and LCM): the U-Net gets `inner_model.sigma_to_t(sigma)`, a
  log-sigma interpolated, fractional t (1.6156 -> 499.5).
* A1111, DDIM / PLMS / UniPC: `sigma` already is the U-Net timestep.
* Forge: the U-Net gets `predictor.timestep(sigma)`, the nearest table index (1.6156 -> 500),
  for every sampler (timestep samplers convert t to sigma before the callback).
* reForge: the U-Net gets `model_sampling.timestep(sigma)` (nearest); its k-diffusion wrapper's
  `sigma_to_t` interpolates and is *not* what the U-Net sees.

Each backend object (`ella_ext.backends`) asks its WebUI for the mapping at a call. The pure functions
here compute the same mappings from a sigma table; tests check them against the pairs observed on
real WebUIs.
"""

from __future__ import annotations

import torch


def sd15_alphas_cumprod(steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> torch.Tensor:
    """The 'scaled linear' schedule SD1.x was trained with."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def sigmas_from_alphas(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    return ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5


def nearest_timestep(sigma: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Index of the nearest table sigma in log space (Forge/reForge/ComfyUI `timestep(sigma)`)."""
    log_sigmas = sigmas.log().to(torch.float64)
    dists = sigma.to(torch.float64).log().reshape(-1, 1) - log_sigmas[None, :]
    return dists.abs().argmin(dim=1).reshape(sigma.shape).to(torch.float32)


def interpolated_timestep(sigma: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Fractional index by linear interpolation in log sigma (k-diffusion `DiscreteSchedule.sigma_to_t`)."""
    log_sigmas = sigmas.log().to(torch.float64)
    log_sigma = sigma.to(torch.float64).log().reshape(-1)
    dists = log_sigma[:, None] - log_sigmas[None, :]
    low = dists.ge(0).cumsum(dim=1).argmax(dim=1).clamp(max=log_sigmas.shape[0] - 2)
    high = low + 1
    lo, hi = log_sigmas[low], log_sigmas[high]
    w = ((lo - log_sigma) / (lo - hi)).clamp(0, 1)
    return ((1 - w) * low + w * high).reshape(sigma.shape).to(torch.float32)
