"""sd_unet (A1111): the selected alternative U-Net ("SD Unet" setting), e.g. a TensorRT engine. While
`current_unet` is set, every U-Net forward goes to its `forward(x, timesteps, context)` instead of the
PyTorch U-Net (the fake model's apply_model asks it)."""


class SdUnetOption:
    model_name = None
    label = None

    def create_unet(self):
        raise NotImplementedError


class SdUnet:
    def forward(self, x, timesteps, context, *args, **kwargs):
        raise NotImplementedError

    def activate(self):
        pass

    def deactivate(self):
        pass


current_unet_option = None
current_unet = None
