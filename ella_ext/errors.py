"""The one exception type users see.

Every failure a user can cause or fix (a missing file, a bad argument, a model of the wrong
family) raises an `ELLAError` whose message names the file or setting and says what to do.
`status_code` and `detail` are instance attributes because the WebUI's API error handler reads
them with `vars(exc)`: a bad request then comes back as HTTP 422 with the message, not a 500
with a stack trace.
"""

from __future__ import annotations


def exception_summary(exc: BaseException, limit: int = 300) -> str:
    """'Type: first line of the message' (the line cut at `limit`), for messages that quote a library's failure."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:limit] if lines else ''}"


class ELLAError(Exception):
    """A user-facing ELLA failure. The message says what is wrong and what to do."""

    default_status = 500

    def __init__(self, message: str, *, status_code: int | None = None):
        super().__init__(message)
        self.status_code = status_code if status_code is not None else self.default_status
        self.detail = message


class ModelFileError(ELLAError):
    """The ELLA (TSC) weights file is missing, unreadable, not safetensors, or does not fit."""

    default_status = 422


class TextEncoderError(ELLAError):
    """The T5 text-encoder folder is missing files, malformed, or does not fit."""

    default_status = 422


class ArgumentError(ELLAError):
    """The user's ELLA arguments (UI, API payload, infotext) are invalid."""

    default_status = 422


class ModelPathError(ELLAError):
    """A model name does not resolve to a file inside the configured model folders."""

    default_status = 422


class UnsupportedModelError(ELLAError):
    """The loaded Stable Diffusion checkpoint cannot take ELLA conditioning (not SD1.x)."""

    default_status = 422


class DeviceError(ELLAError):
    """The requested device or dtype cannot run the model."""

    default_status = 500


class ConditioningError(ELLAError):
    """The sampler handed ELLA conditioning it cannot replace (row count, shape, type)."""

    default_status = 500


class IncompatibleExtensionError(ELLAError):
    """Another extension's setting cannot work with ELLA; the message names it and the fix."""

    default_status = 422


class UpsamplerError(ELLAError):
    """Caption upsampling (the LLM that expands a prompt) failed; the message names the endpoint and the fix."""

    default_status = 502


class UpsamplerOffError(UpsamplerError):
    """No LLM endpoint is set: nothing is sent anywhere."""

    default_status = 409


class UpsamplerUnreachableError(UpsamplerError):
    """The endpoint refused the connection, its host is unknown, or it closed the connection without answering."""

    default_status = 503


class UpsamplerTimeoutError(UpsamplerError):
    """The endpoint did not answer (or stopped streaming) within the timeout."""

    default_status = 504


class UpsamplerHTTPError(UpsamplerError):
    """The endpoint answered with an HTTP error; `upstream_status` is its status, the message quotes its reason."""

    default_status = 502

    def __init__(self, message: str, *, upstream_status: int):
        super().__init__(message)
        self.upstream_status = upstream_status


class UpsamplerResponseError(UpsamplerError):
    """The endpoint's answer is not an OpenAI chat completion, or holds no usable text."""

    default_status = 502
