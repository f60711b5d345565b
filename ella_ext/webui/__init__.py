"""The WebUI adapter: the only part of `ella_ext` (with `backends` and `companions`) that touches the WebUI.

It translates WebUI objects (the processing object `p`, the cfg-denoiser params, options) into library
calls. `modules` is imported inside functions only, so importing it costs nothing at start-up and works
without a WebUI (tests pass fake `modules`). Modules by concern:

* `extension.py` - `ELLAExtension`, the script's lifecycle (process, before sampling, every denoiser call,
  postprocess) and turning `p` into a `PassSpec`;
* `job.py` - per-job state on `p`, the sample guard that fails loudly, copies of `p`, notes on images;
* `ui.py` - the accordion, built from the argument schema;
* `settings.py` - the Settings tab and options, model folders, API credentials;
* `xyz.py` - the XYZ plot axes, from the argument schema;
* `clip_text.py` - the WebUI's own CLIP conditioning of ELLA's separate CLIP texts;
* `prompt_parser.py` - the WebUI's prompt parser as a `PromptSyntax`;
* `progress.py` - ELLA's activity as the WebUI's progress text.
"""
