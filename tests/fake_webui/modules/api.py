"""/sdapi/v1/txt2img and img2img: alwayson_scripts mapping (Api.init_script_args) and error responses
(api_middleware's handle_exception: status from vars(e)['status_code'], body with the message)."""

from contextlib import closing

from modules import infotext_utils, processing, scripts


class Api:
    def __init__(self, script_classes):
        self.runners = {
            False: scripts.ScriptRunner([cls() for cls in script_classes], is_img2img=False),
            True: scripts.ScriptRunner([cls() for cls in script_classes], is_img2img=True),
        }

    def init_script_args(self, runner, payload):
        script_args = runner.default_args()
        if payload.get("infotext"):
            params = infotext_utils.parse_generation_parameters(payload["infotext"])
            for script in runner.alwayson_scripts:
                for index, (component, value) in enumerate(infotext_utils.paste(script, params).items()):
                    if value is not None:
                        script_args[runner.inputs.index(component)] = value
        for name, entry in (payload.get("alwayson_scripts") or {}).items():
            index = runner.title_index(name)
            if index is None:
                raise ApiError(422, f"always on script {name} not found")
            script = runner.alwayson_scripts[index]
            args = entry.get("args", [])
            for i in range(min(len(args), script.args_to - script.args_from)):
                script_args[script.args_from + i] = args[i]
        return tuple(script_args)

    def run(self, payload, img2img=False, sd_model=None):
        """Returns (status_code, body); body has 'images', 'info' on success."""
        runner = self.runners[img2img]
        fields = {k: v for k, v in payload.items() if k not in ("alwayson_scripts", "infotext")}
        try:
            script_args = self.init_script_args(runner, payload)
            cls = (
                processing.StableDiffusionProcessingImg2Img if img2img else processing.StableDiffusionProcessingTxt2Img
            )
            with closing(cls(**fields, sd_model=sd_model, is_api=True, scripts=runner, script_args=script_args)) as p:
                self.last_p = p
                processed = processing.process_images(p)
            return 200, {
                "images": processed.images,
                "info": processed.info,
                "infotexts": processed.infotexts,
                "comments": processed.comments,
            }
        except Exception as e:
            return vars(e).get("status_code", 500), {
                "error": type(e).__name__,
                "detail": vars(e).get("detail", ""),
                "errors": str(e),
            }

    def txt2img(self, payload, sd_model=None):
        return self.run(payload, False, sd_model)

    def img2img(self, payload, sd_model=None):
        return self.run(payload, True, sd_model)


class ApiError(Exception):
    def __init__(self, status_code, detail):
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail
