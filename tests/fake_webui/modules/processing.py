"""process_images with the WebUI's hook order (A1111 1.10 processing.py; Forge/reForge deltas noted)."""

from contextlib import closing  # noqa: F401 - callers use it as the WebUI does

import torch
from modules import devices, extra_networks, infotext_utils, prompt_parser, sd_samplers, shared


class StableDiffusionProcessing:
    cached_c = [None, None]  # class-level, shared by all jobs, as in the WebUI
    cached_uc = [None, None]

    def __init__(
        self,
        prompt="",
        negative_prompt="",
        steps=4,
        batch_size=1,
        n_iter=1,
        cfg_scale=7.0,
        sampler_name="Euler",
        seed=1,
        width=64,
        height=64,
        styles=None,
        sd_model=None,
        is_api=False,
        scripts=None,
        script_args=None,
    ):
        self.prompt = prompt
        self.negative_prompt = negative_prompt
        self.steps = steps
        self.batch_size = batch_size
        self.n_iter = n_iter
        self.cfg_scale = cfg_scale
        self.sampler_name = sampler_name
        self.seed = seed
        self.width, self.height = width, height
        self.styles = styles or []
        self.sd_model = sd_model or shared.sd_model
        self.is_api = is_api
        self.disable_extra_networks = False
        self.extra_network_data = None
        self.scripts = scripts
        self.script_args = script_args
        self.extra_generation_params = {}
        self.comments = {}
        self.is_hr_pass = False
        self.iteration = 0
        self.c = self.uc = None
        self.denoisers = []
        self.closed = False

    def comment(self, text):
        self.comments[text] = 1

    # prompts -------------------------------------------------------------------------------------
    def setup_prompts(self):
        prompts = self.prompt if isinstance(self.prompt, list) else [self.prompt] * (self.batch_size * self.n_iter)
        negs = self.negative_prompt if isinstance(self.negative_prompt, list) else [self.negative_prompt] * len(prompts)
        self.all_prompts = [shared.apply_styles(x, self.styles) for x in prompts]
        self.all_negative_prompts = list(negs)
        self.all_seeds = [self.seed + i for i in range(len(prompts))]

    def parse_extra_network_prompts(self):
        self.prompts, self.extra_network_data = extra_networks.parse_prompts(self.prompts)

    def _conds(self, function, prompts, steps, cache, hires_steps=None):
        key = (tuple(prompts), steps, hires_steps, self.sd_model.sd_checkpoint_info.title)
        if cache[0] == key:
            return cache[1]
        with devices.autocast():
            cache[1] = function(
                self.sd_model, prompt_parser.SdConditioning(prompts), steps, hires_steps, shared.opts.use_old_scheduling
            )
        cache[0] = key
        return cache[1]

    def setup_conds(self):
        config = sd_samplers.find_sampler_config(self.sampler_name)
        self.firstpass_steps = config.total_steps(self.steps) if config else self.steps
        if shared.backend.skips_uncond_at_cfg_1 and self.cfg_scale == 1:
            self.uc = None
        else:
            self.uc = self._conds(
                prompt_parser.get_learned_conditioning, self.negative_prompts, self.firstpass_steps, self.cached_uc
            )
        self.c = self._conds(
            prompt_parser.get_multicond_learned_conditioning, self.prompts, self.firstpass_steps, self.cached_c
        )

    def init(self):
        pass

    def close(self):
        self.c = None
        self.uc = None
        self.closed = True

    def noise(self, shape):
        g = torch.Generator().manual_seed(self.seeds[0])
        return torch.randn((len(self.seeds),) + shape, generator=g)


class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    cached_hr_c = [None, None]
    cached_hr_uc = [None, None]

    def __init__(
        self,
        enable_hr=False,
        hr_scale=2.0,
        hr_second_pass_steps=0,
        hr_prompt="",
        hr_negative_prompt="",
        hr_sampler_name=None,
        denoising_strength=0.5,
        hr_cfg=1.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.enable_hr = enable_hr
        self.hr_second_pass_steps = hr_second_pass_steps
        self.hr_prompt = hr_prompt
        self.hr_negative_prompt = hr_negative_prompt
        self.hr_sampler_name = hr_sampler_name
        self.denoising_strength = denoising_strength
        self.hr_cfg = hr_cfg  # Forge: hires CFG (1.0 by default, which drops the uncond)
        self.hr_c = self.hr_uc = None
        self.hr_extra_network_data = None

    def setup_prompts(self):
        super().setup_prompts()
        if not self.enable_hr:
            return
        hr = self.hr_prompt or self.prompt
        hr_neg = self.hr_negative_prompt or self.negative_prompt
        n = len(self.all_prompts)
        self.all_hr_prompts = [shared.apply_styles(x, self.styles) for x in (hr if isinstance(hr, list) else [hr] * n)]
        self.all_hr_negative_prompts = hr_neg if isinstance(hr_neg, list) else [hr_neg] * n

    def parse_extra_network_prompts(self):
        super().parse_extra_network_prompts()
        if self.enable_hr:
            sl = slice(self.iteration * self.batch_size, (self.iteration + 1) * self.batch_size)
            self.hr_prompts, self.hr_extra_network_data = extra_networks.parse_prompts(self.all_hr_prompts[sl])
            self.hr_negative_prompts = self.all_hr_negative_prompts[sl]

    def calculate_hr_conds(self):
        config = sd_samplers.find_sampler_config(self.hr_sampler_name or self.sampler_name)
        steps = self.hr_second_pass_steps or self.steps
        total = config.total_steps(steps) if config else steps
        if shared.backend.skips_uncond_at_cfg_1 and self.hr_cfg == 1:
            self.hr_uc = None
        else:
            self.hr_uc = self._conds(
                prompt_parser.get_learned_conditioning,
                self.hr_negative_prompts,
                self.firstpass_steps,
                self.cached_hr_uc,
                total,
            )
        self.hr_c = self._conds(
            prompt_parser.get_multicond_learned_conditioning,
            self.hr_prompts,
            self.firstpass_steps,
            self.cached_hr_c,
            total,
        )

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        self.sampler = sd_samplers.create_sampler(self.sampler_name, self.sd_model)
        x = self.noise((4, self.height // 8, self.width // 8))
        if self.scripts is not None:
            self.scripts.process_before_every_sampling(
                self, x=x, noise=x, c=conditioning, uc=unconditional_conditioning
            )
        samples = self.sampler.sample(self, x, conditioning, unconditional_conditioning, self.steps, self.cfg_scale)
        if not self.enable_hr or shared.state.interrupted:
            return samples
        return self.sample_hr_pass(samples)

    def sample_hr_pass(self, samples):
        self.is_hr_pass = True
        self.sampler = sd_samplers.create_sampler(self.hr_sampler_name or self.sampler_name, self.sd_model)
        samples = torch.nn.functional.interpolate(samples, scale_factor=2, mode="nearest")
        noise = self.noise(tuple(samples.shape[1:]))
        if not self.disable_extra_networks:
            extra_networks.activate(self, self.hr_extra_network_data)
        self.calculate_hr_conds()
        if self.scripts is not None:
            self.scripts.before_hr(self)
            self.scripts.process_before_every_sampling(self, x=samples, noise=noise, c=self.hr_c, uc=self.hr_uc)
            if shared.backend.repeats_hires_hook:  # Forge resets its UNet patcher and calls the hook again
                self.scripts.process_before_every_sampling(self, x=samples, noise=noise, c=self.hr_c, uc=self.hr_uc)
        cfg = self.hr_cfg if shared.backend.skips_uncond_at_cfg_1 else self.cfg_scale
        steps = self.hr_second_pass_steps or self.steps
        samples = self.sampler.sample_img2img(self, samples, noise, self.hr_c, self.hr_uc, steps, cfg)
        self.is_hr_pass = False
        return samples


class StableDiffusionProcessingImg2Img(StableDiffusionProcessing):
    def __init__(self, init_latent=None, denoising_strength=0.75, **kwargs):
        super().__init__(**kwargs)
        self.init_latent = init_latent
        self.denoising_strength = denoising_strength

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        self.sampler = sd_samplers.create_sampler(self.sampler_name, self.sd_model)
        x = (
            self.init_latent
            if self.init_latent is not None
            else torch.zeros(len(self.seeds), 4, self.height // 8, self.width // 8)
        )
        noise = self.noise(tuple(x.shape[1:]))
        if self.scripts is not None:
            self.scripts.process_before_every_sampling(
                self, x=x, noise=noise, c=conditioning, uc=unconditional_conditioning
            )
        return self.sampler.sample_img2img(
            self, x, noise, conditioning, unconditional_conditioning, self.steps, self.cfg_scale
        )


class Processed:
    def __init__(self, p, images, infotexts):
        self.images = images
        self.infotexts = infotexts
        self.info = infotexts[0] if infotexts else ""
        self.comments = "".join(f"{c}\n" for c in p.comments)


def create_infotext(p, index):
    params = {
        "Steps": p.steps,
        "Sampler": p.sampler_name,
        "CFG scale": p.cfg_scale,
        "Seed": p.all_seeds[index],
        "Size": f"{p.width}x{p.height}",
        "Model": p.sd_model.sd_checkpoint_info.name,
    }
    # as the WebUI's create_infotext: a list holds one value per image, a callable is asked
    params.update(
        {
            k: v[index] if isinstance(v, list) else v(p=p, index=index) if callable(v) else v
            for k, v in p.extra_generation_params.items()
        }
    )
    return infotext_utils.create_infotext(p.all_prompts[index], p.all_negative_prompts[index], params)


def process_images(p):
    shared.state.reset()
    if p.scripts is not None:
        p.scripts.before_process(p)
    return process_images_inner(p)


def process_images_inner(p):
    p.setup_prompts()
    if p.scripts is not None:
        p.scripts.process(p)
    p.init()
    images, infotexts = [], []
    bs = p.batch_size
    for n in range(p.n_iter):
        p.iteration = n
        if shared.state.skipped:
            shared.state.skipped = False
        if shared.state.interrupted:
            break
        sl = slice(n * bs, (n + 1) * bs)
        p.prompts, p.negative_prompts, p.seeds = p.all_prompts[sl], p.all_negative_prompts[sl], p.all_seeds[sl]
        if p.scripts is not None:
            p.scripts.before_process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.seeds)
        p.parse_extra_network_prompts()
        if not p.disable_extra_networks:
            extra_networks.activate(p, p.extra_network_data)
        if p.scripts is not None:
            p.scripts.process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.seeds)
        p.setup_conds()
        samples = p.sample(
            conditioning=p.c,
            unconditional_conditioning=p.uc,
            seeds=p.seeds,
            subseeds=p.seeds,
            subseed_strength=0,
            prompts=p.prompts,
        )
        if p.scripts is not None:
            p.scripts.postprocess_batch(p, samples, batch_number=n)
        for i in range(samples.shape[0]):
            images.append(samples[i].clone())
            infotexts.append(create_infotext(p, n * bs + i))
    if not p.disable_extra_networks and p.extra_network_data:
        extra_networks.deactivate(p, p.extra_network_data)
    processed = Processed(p, images, infotexts)
    if p.scripts is not None:
        p.scripts.postprocess(p, processed)
    return processed
