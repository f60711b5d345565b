"""Samplers and the CFG denoiser, per backend (shared.backend: one of modules.fake_backends).

What each backend hands the cfg-denoiser callback and what its U-Net then receives (docs/webui_facts.md):
- A1111 expands x/sigma to [N_c + B] (cond rows, then uncond rows); k-diffusion U-Net t is the
  wrapper's interpolated sigma_to_t; DDIM/PLMS/UniPC pass t itself as "sigma".
- Forge/reForge pass [B] sigmas (DDIM converts t -> sigma first); the U-Net gets the nearest table
  index (Forge predictor.timestep, reForge model_sampling.timestep). reForge's k-diffusion wrapper
  has an interpolating sigma_to_t that the U-Net does NOT use. Forge drops uncond when it is None.
"""

from types import SimpleNamespace

import torch
from modules import prompt_parser, shared
from modules.script_callbacks import CFGDenoiserParams, cfg_denoiser_callback
from modules.sd_samplers_common import InterruptedException

from ella_ext.timesteps import interpolated_timestep, nearest_timestep

K_SAMPLERS = ("Euler", "Euler a", "DPM++ 2M")
TIMESTEP_SAMPLERS = ("DDIM", "PLMS", "UniPC")


class SamplerConfig:
    def __init__(self, name):
        self.name = name

    def total_steps(self, steps):
        return steps


def find_sampler_config(name):
    return SamplerConfig(name) if name in K_SAMPLERS + TIMESTEP_SAMPLERS else None


class KDiffusionWrapper(torch.nn.Module):
    """A1111's CompVisDenoiser / reForge's k-diffusion wrapper: an interpolating sigma_to_t."""

    def __init__(self, sd_model):
        super().__init__()
        self.inner_model = sd_model
        self.sigmas = sd_model.sigmas

    def sigma_to_t(self, sigma):
        return interpolated_timestep(sigma, self.sigmas)

    def forward(self, x, sigma, cond):
        return self.inner_model.apply_model(x, self.sigma_to_t(sigma), cond["c_crossattn"][0])


class ForgeScheduleLinker(torch.nn.Module):
    def __init__(self, sd_model):
        super().__init__()
        self.inner_model = sd_model

    def sigma_to_t(self, sigma):
        return self.inner_model.forge_objects.unet.model.predictor.timestep(sigma)


class TimestepsDenoiser(torch.nn.Module):
    def __init__(self, sd_model):
        super().__init__()
        self.inner_model = sd_model

    def forward(self, x, t, cond):
        return self.inner_model.apply_model(x, t, cond["c_crossattn"][0])


class CFGDenoiser:
    def __init__(self, sampler, p, timestep_sampler):
        self.sampler = sampler
        self.p = p
        self.step = 0
        self.total_steps = None
        self.timestep_sampler = timestep_sampler
        model = p.sd_model
        if timestep_sampler:
            self.inner_model = TimestepsDenoiser(model)
        elif shared.backend.timestep_source == "predictor":
            self.inner_model = ForgeScheduleLinker(model)
        else:
            self.inner_model = KDiffusionWrapper(model)

    def unet_t(self, sigma):
        model = self.p.sd_model
        source = shared.backend.timestep_source
        if source == "sigma_to_t":
            return sigma if self.timestep_sampler else self.inner_model.sigma_to_t(sigma)
        return getattr(model.forge_objects.unet.model, source).timestep(sigma)

    def pad_cond_uncond(self, cond, uncond):
        """Append empty-prompt CLIP chunks to the shorter one (A1111 "Pad prompt/negative prompt")."""
        empty = self.p.sd_model.cond_stage_model_empty_prompt
        repeats = (cond.shape[1] - uncond.shape[1]) // empty.shape[1]
        if repeats < 0:
            cond = torch.cat([cond, empty.repeat(cond.shape[0], -repeats, 1)], dim=1)
        elif repeats > 0:
            uncond = torch.cat([uncond, empty.repeat(uncond.shape[0], repeats, 1)], dim=1)
        return cond, uncond

    def pad_cond_uncond_v0(self, cond, uncond):
        """Repeat uncond's last token, or cut uncond to cond's length (the pre-1.6 DDIM padding)."""
        if uncond.shape[1] < cond.shape[1]:
            uncond = torch.cat([uncond, uncond[:, -1:].repeat(1, cond.shape[1] - uncond.shape[1], 1)], dim=1)
        elif uncond.shape[1] > cond.shape[1]:
            uncond = uncond[:, : cond.shape[1]]
        return cond, uncond

    def combine_denoised(self, x, cond_out, conds_list, unc_out, cond_scale):
        """The WebUI's CFG combination per image (extensions such as Neutral Prompt replace it)."""
        denoised = torch.zeros_like(x)
        for i, conds in enumerate(conds_list):
            if unc_out is None:
                denoised[i] = sum(cond_out[row] * w for row, w in conds)
            else:
                denoised[i] = unc_out[i] + sum((cond_out[row] - unc_out[i]) * (w * cond_scale) for row, w in conds)
        return denoised

    def __call__(self, x, sigma, uncond, cond, cond_scale):
        state = shared.state
        if state.interrupted or state.skipped:
            raise InterruptedException
        model = self.p.sd_model
        conds_list, tensor = prompt_parser.reconstruct_multicond_batch(cond, self.step)
        uncond_t = prompt_parser.reconstruct_cond_batch(uncond, self.step) if uncond is not None else None
        repeats = [len(c) for c in conds_list]
        if shared.backend.expands_rows:
            x_in = torch.cat([torch.stack([x[i]] * n) for i, n in enumerate(repeats)] + [x])
            sigma_in = torch.cat([torch.stack([sigma[i]] * n) for i, n in enumerate(repeats)] + [sigma])
            params = CFGDenoiserParams(
                x_in, None, sigma_in, state.sampling_step, state.sampling_steps, tensor, uncond_t, self
            )
        else:
            params = CFGDenoiserParams(
                x, None, sigma, state.sampling_step, state.sampling_steps, tensor, uncond_t, self
            )
        cfg_denoiser_callback(params)
        tensor, uncond_t = params.text_cond, params.text_uncond

        row_image = [i for i, n in enumerate(repeats) for _ in range(n)]
        if shared.backend.expands_rows:
            t_all = self.unet_t(params.sigma)
            t_cond, t_unc = t_all[: len(row_image)], t_all[len(row_image) :]
        else:
            t_img = self.unet_t(params.sigma)
            t_cond, t_unc = t_img[row_image], t_img
        x_cond = x[row_image]
        if shared.backend.pads_after_callback and uncond_t is not None and tensor.shape[1] != uncond_t.shape[1]:
            # A1111 pads right after the callbacks, through these denoiser methods (sd_samplers_cfg_denoiser.py)
            if shared.opts.pad_cond_uncond_v0:
                tensor, uncond_t = self.pad_cond_uncond_v0(tensor, uncond_t)
            elif shared.opts.pad_cond_uncond:
                tensor, uncond_t = self.pad_cond_uncond(tensor, uncond_t)
        if shared.backend.unet_via_wrapper:
            # A1111 calls its k-diffusion wrapper with x and sigma per row; the wrapper finds t (extensions
            # such as AnimateDiff replace the wrapper's forward)
            s_cond, s_unc = params.sigma[: len(row_image)], params.sigma[len(row_image) :]

            def unet(x_in, sigma_in, t_in, context):
                return self.inner_model(x_in, sigma_in, cond={"c_crossattn": [context]})
        else:
            s_cond = s_unc = None

            def unet(x_in, sigma_in, t_in, context):
                return model.apply_model(x_in, t_in, context)

        if uncond_t is not None and tensor.shape[1] == uncond_t.shape[1]:
            out = unet(
                torch.cat([x_cond, x]),
                torch.cat([s_cond, s_unc]) if s_cond is not None else None,
                torch.cat([t_cond, t_unc]),
                torch.cat([tensor, uncond_t]),
            )
            cond_out, unc_out = out[: len(row_image)], out[len(row_image) :]
        else:
            cond_out = unet(x_cond, s_cond, t_cond, tensor)
            unc_out = unet(x, s_unc, t_unc, uncond_t) if uncond_t is not None else None

        denoised = self.combine_denoised(x, cond_out, conds_list, unc_out, cond_scale)
        self.step += 1
        state.sampling_step += 1
        return denoised


class Sampler:
    def __init__(self, name, sd_model):
        self.name = name
        self.timestep_sampler = name in TIMESTEP_SAMPLERS
        self.sd_model = sd_model

    def _schedule(self, steps):
        """(values passed as sigma to the denoiser, real sigmas for the update), length steps + 1."""
        sigmas = self.sd_model.sigmas
        if not self.timestep_sampler:
            # k-diffusion: an exponential schedule whose sigmas fall between the table's entries
            real = torch.exp(torch.linspace(float(sigmas[-1].log()), float(sigmas[0].log()), steps + 1)[1:].flip(0))
            real = torch.cat([real * 0.97, torch.zeros(1)])
            return real, real
        ts = [999 - i * (1000 // steps) for i in range(steps)]
        real = torch.tensor([float(sigmas[t]) for t in ts] + [0.0])
        if shared.backend.timestep_samplers_pass_t:
            return torch.tensor([float(t) for t in ts] + [0.0]), real
        return real, real

    def _run(self, p, x, c, uc, sched, real, cond_scale):
        denoiser = CFGDenoiser(self, p, self.timestep_sampler)
        denoiser.total_steps = len(sched) - 1
        shared.state.sampling_steps = denoiser.total_steps
        shared.state.sampling_step = 0
        p.denoisers.append(denoiser)
        try:
            for i in range(len(sched) - 1):
                s = torch.full((x.shape[0],), float(sched[i]))
                denoised = denoiser(x, s, uc, c, cond_scale)
                x = x + (x - denoised) / real[i] * (real[i + 1] - real[i])
        except InterruptedException:
            pass
        return x

    def sample(self, p, x, c, uc, steps, cond_scale):
        sched, real = self._schedule(steps)
        return self._run(p, x * real[0], c, uc, sched, real, cond_scale)

    def sample_img2img(self, p, x, noise, c, uc, steps, cond_scale):
        sched, real = self._schedule(steps)
        t_enc = max(1, int(min(p.denoising_strength, 0.999) * steps))
        sched, real = sched[steps - t_enc :], real[steps - t_enc :]
        return self._run(p, x + noise * real[0], c, uc, sched, real, cond_scale)


def create_sampler(name, sd_model):
    if find_sampler_config(name) is None:
        raise ValueError(f"bad sampler name: {name}")
    return Sampler(name, sd_model)


def fake_sd_model(family="sd1", backend=None):
    return FakeSDModel(family, backend or shared.backend)


class Predictor:
    def __init__(self, sigmas):
        self.sigmas = sigmas

    def timestep(self, sigma):
        return nearest_timestep(sigma, self.sigmas)


class FakeSDModel:
    """An SD model whose CLIP and U-Net are tiny deterministic functions that record what they get."""

    def __init__(self, family="sd1", backend=None):
        from ella_ext.timesteps import sd15_alphas_cumprod, sigmas_from_alphas

        backend = backend or shared.backend
        self.family = family
        for name in ("sd1", "sd2", "sdxl", "sd3"):
            setattr(self, f"is_{name}", family == name)
        self.sd_checkpoint_info = SimpleNamespace(title=f"fake-{family}.safetensors [0123abcd]", name=f"fake-{family}")
        self.alphas_cumprod = sd15_alphas_cumprod().float()
        self.sigmas = sigmas_from_alphas(self.alphas_cumprod.double()).float()
        self.context_dim = {"sd1": 768, "sd2": 1024, "sdxl": 2048, "sd3": 4096}[family]
        self.unet_calls = []
        self.clip_calls = 0
        self.fail_at_unet_call = None
        if backend.timestep_source != "sigma_to_t":
            inner = SimpleNamespace(**{backend.timestep_source: Predictor(self.sigmas)})
            self.forge_objects = SimpleNamespace(unet=SimpleNamespace(model=inner))

    def get_learned_conditioning(self, texts):
        self.clip_calls += 1
        out = []
        for text in texts:
            g = torch.Generator().manual_seed(sum(map(ord, text)) * 7919 + len(text))
            chunks = 1 + len(text) // 150
            out.append(torch.randn(77 * chunks, self.context_dim, generator=g) * 0.1 + 0.05)
        if self.family == "sdxl":
            return {"crossattn": out, "vector": [torch.zeros(2816) for _ in texts]}
        return out

    @property
    def cond_stage_model_empty_prompt(self):
        return self.get_learned_conditioning([""])[0][None]

    def apply_model(self, x, t, context):
        if self.fail_at_unet_call is not None and len(self.unet_calls) == self.fail_at_unet_call:
            raise RuntimeError("simulated U-Net failure (out of memory)")
        if isinstance(context, dict):
            context = context["crossattn"]
        self.unet_calls.append(SimpleNamespace(t=t.detach().clone(), context=context.detach().clone()))
        from modules import sd_unet

        if sd_unet.current_unet is not None:  # A1111's U-Net forward hands every call to the selected one
            sd_unet.current_unet.forward(x, t, context)
        weight = context.float().mean(dim=(1, 2)) + context.float()[:, :, :4].std(dim=(1, 2))
        return 0.5 * x + weight[:, None, None, None] + 1e-4 * t.float()[:, None, None, None]
