"""Script base class and a ScriptRunner that slices script_args and swallows hook exceptions like the WebUI's."""

import sys

from modules import errors

AlwaysVisible = object()
scripts_data = []  # ScriptClassData(script_class, path, basedir, module) of every loaded script


class Script:
    filename = None
    args_from = None
    args_to = None
    alwayson = False
    is_txt2img = False
    is_img2img = False
    infotext_fields = None
    paste_field_names = None

    def title(self):
        raise NotImplementedError

    def show(self, is_img2img):
        return True

    def ui(self, is_img2img):
        pass

    def elem_id(self, item_id):
        tab = "img2img" if self.is_img2img else "txt2img"
        return f"script_{tab}_{self.title().lower().replace(' ', '_')}_{item_id}"

    # hooks with the WebUI's signatures
    def setup(self, p, *args):
        pass

    def before_process(self, p, *args):
        pass

    def process(self, p, *args):
        pass

    def before_process_batch(self, p, *args, **kwargs):
        pass

    def after_extra_networks_activate(self, p, *args, **kwargs):
        pass

    def process_batch(self, p, *args, **kwargs):
        pass

    def process_before_every_sampling(self, p, *args, **kwargs):
        pass

    def before_hr(self, p, *args):
        pass

    def postprocess_batch(self, p, *args, **kwargs):
        pass

    def postprocess(self, p, processed, *args):
        pass


class ScriptRunner:
    def __init__(self, scripts_list, is_img2img=False):
        self.alwayson_scripts = []
        self.inputs = [None]  # index 0: the selectable-script dropdown
        for script in scripts_list:
            module = sys.modules.get(type(script).__module__)
            script.filename = script.filename or getattr(module, "__file__", None)  # the WebUI sets the script's file
            script.is_img2img = is_img2img
            script.is_txt2img = not is_img2img
            if script.show(is_img2img) is AlwaysVisible:
                script.alwayson = True
                controls = script.ui(is_img2img) or []
                script.args_from = len(self.inputs)
                self.inputs.extend(controls)
                script.args_to = len(self.inputs)
                self.alwayson_scripts.append(script)

    def default_args(self):
        return [None] + [c.value for c in self.inputs[1:]]

    def _each(self, method, p, *extra, **kwargs):
        for script in self.alwayson_scripts:
            try:
                args = p.script_args[script.args_from : script.args_to]
                getattr(script, method)(p, *extra, *args, **kwargs)
            except Exception:
                errors.report(f"Error running {method}: {script.title()}", exc_info=True)

    def before_process(self, p):
        self._each("before_process", p)

    def process(self, p):
        self._each("process", p)

    def before_process_batch(self, p, **kw):
        self._each("before_process_batch", p, **kw)

    def after_extra_networks_activate(self, p, **kw):
        self._each("after_extra_networks_activate", p, **kw)

    def process_batch(self, p, **kw):
        self._each("process_batch", p, **kw)

    def process_before_every_sampling(self, p, **kw):
        self._each("process_before_every_sampling", p, **kw)

    def before_hr(self, p):
        self._each("before_hr", p)

    def postprocess_batch(self, p, images, **kw):
        self._each("postprocess_batch", p, images=images, **kw)

    def postprocess(self, p, processed):
        for script in self.alwayson_scripts:
            try:
                args = p.script_args[script.args_from : script.args_to]
                script.postprocess(p, processed, *args)
            except Exception:
                errors.report(f"Error running postprocess: {script.title()}", exc_info=True)

    def title_index(self, title):
        for i, s in enumerate(self.alwayson_scripts):
            if s.title().lower() == title.lower():
                return i
        return None
