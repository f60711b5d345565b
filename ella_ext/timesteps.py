"""The U-Net timestep for each denoiser call, per WebUI backend.

ELLA's TSC must see the timestep the U-Net receives at that call. The cfg-denoiser callback gets
`sigma`, whose meaning differs by backend and sampler (verified against each WebUI's source and
on running WebUIs, see `webui_observed.md`):

* A1111, k-diffusion samplers (and LCM): the U-Net gets `inner_model.sigma_to_t(sigma)`, a
  log-sigma interpolated, fractional t (1.6156 -> 499.5).
* A1111, DDIM / PLMS / UniPC: `sigma` already is the U-Net timestep.
* Forge: the U-Net gets `predictor.timestep(sigma)`, the nearest table index (1.6156 -> 500),
  for every sampler (timestep samplers convert t to sigma before the callback).
* reForge: the U-Net gets `model_sampling.timestep(sigma)` (nearest); its k-diffusion wrapper's
  `sigma_to_t` interpolates and is *not* what the U-Net sees.

`unet_timesteps` dispatches on the backend with duck typing, so this module imports nothing from
the WebUI. The pure functions below compute the same mappings from a sigma table; tests check
them against the pairs observed on real WebUIs.
"""

from __future__ import annotations

import torch

from .errors import ConditioningError

A1111 = "a1111"
FORGE = "forge"
REFORGE = "reforge"
BACKENDS = (A1111, FORGE, REFORGE)


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


def unet_timesteps(backend: str, denoiser, sigma: torch.Tensor, sd_model=None) -> torch.Tensor:
    """The timesteps the U-Net receives at this denoiser call (same length as `sigma`)."""
    if backend == A1111:
        inner = denoiser.inner_model
        to_t = getattr(inner, "sigma_to_t", None)
        return to_t(sigma) if to_t is not None else sigma  # timestep samplers pass t itself
    model = sd_model if sd_model is not None else getattr(getattr(denoiser, "inner_model", None), "inner_model", None)
    unet = getattr(getattr(model, "forge_objects", None), "unet", None)
    inner_model = getattr(unet, "model", None)
    if backend == FORGE:
        predictor = getattr(inner_model, "predictor", None)
        if predictor is not None:
            return predictor.timestep(sigma)
    elif backend == REFORGE:
        sampling = getattr(inner_model, "model_sampling", None)
        if sampling is not None:
            return sampling.timestep(sigma)
    else:
        raise ConditioningError(f"Unknown WebUI backend '{backend}'; expected one of {', '.join(BACKENDS)}.")
    raise ConditioningError(
        f"ELLA cannot find the U-Net's timestep mapping on this {backend} model "
        "(forge_objects.unet.model has no predictor/model_sampling); this WebUI version is not supported."
    )
