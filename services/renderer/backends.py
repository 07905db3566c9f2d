"""Where frames are rendered: one interface, in-process (embedded mode) or Triton (tritonclient)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal, Protocol

import numpy as np

from services.renderer.avatars import AvatarCache
from shared.config import Settings
from shared.outages import ServiceUnavailable, retry_through_outage
from shared.storage import ObjectStore
from talkinghead.export.artifact import ArtifactError

TRITON = "triton"  # the service name in ServiceUnavailable past the retry budget

# What a Triton server says while it is away or still loading its models after a restart:
# worth retrying. Anything else (a bad input, a model that failed) fails the batch at once.
_TRANSIENT = ("unavailable", "not ready", "connection", "socket", "refused", "reset", "timed out",
              "unknown model", "not found", "broken pipe", "eof")  # fmt: skip


class RenderBackendError(RuntimeError):
    """The backend could not render (server down, model error)."""


# numpy dtype name -> Triton datatype of the generated model configs and requests.
TRITON_DTYPES = {
    "float32": "FP32", "float16": "FP16", "float64": "FP64", "int32": "INT32",
    "int64": "INT64", "uint8": "UINT8", "bool": "BOOL",
}  # fmt: skip


def triton_input_name(name: str) -> str:
    """The Triton tensor name of a named renderer input."""
    return name.upper()


class FrameBackend(Protocol):
    """Renders B frames of one avatar from its named per-frame inputs."""

    def render(self, avatar_id: str, family: str, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """{name: (B, *shape)} -> (B, height, width, 4) uint8 premultiplied RGBA."""
        ...


class InProcessBackend:
    """The exported TorchScript renderer in this process, through the same avatar cache."""

    def __init__(self, cache: AvatarCache) -> None:
        self.cache = cache

    def render(self, avatar_id: str, family: str, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Render with the cached export."""
        avatar = self.cache.get(avatar_id)
        try:
            return avatar.render(inputs)
        except (ArtifactError, ValueError) as exc:  # wrong inputs or a broken export
            raise RenderBackendError(f"{family}: {exc}") from exc


class TritonBackend:
    """Frames from a Triton server's renderer models (one per family), over HTTP or gRPC."""

    def __init__(
        self,
        url: str,
        protocol: Literal["http", "grpc"] = "http",
        timeout_s: float = 120.0,
        retry_s: float = 60.0,
    ) -> None:
        self.protocol = protocol
        self.timeout_s = timeout_s
        self.retry_s = retry_s  # how long a batch is retried while the server is away
        self.client: Any
        if protocol == "grpc":
            import tritonclient.grpc as grpcclient

            self._mod: Any = grpcclient
            self.client = grpcclient.InferenceServerClient(url)
        else:
            import tritonclient.http as httpclient

            self._mod = httpclient
            self.client = httpclient.InferenceServerClient(
                url, connection_timeout=timeout_s, network_timeout=timeout_s
            )

    def _input(self, name: str, array: np.ndarray, dtype: str) -> Any:
        tensor = self._mod.InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(array)
        return tensor

    def render(self, avatar_id: str, family: str, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """One inference request carrying the B frames to the family's model."""
        from tritonclient.utils import InferenceServerException

        b = len(next(iter(inputs.values())))
        tensors = [
            self._input(
                "AVATAR_ID", np.array([[avatar_id.encode()]] * b, dtype=np.object_), "BYTES"
            )
        ]
        for name, value in inputs.items():
            array = np.ascontiguousarray(value)
            if array.ndim == 1:  # a scalar per frame travels as dims [1]
                array = array.reshape(b, 1)
            dtype = TRITON_DTYPES.get(array.dtype.name)
            if dtype is None:
                raise RenderBackendError(f"input {name!r} has dtype {array.dtype}, not servable")
            tensors.append(self._input(triton_input_name(name), array, dtype))
        outputs = [self._mod.InferRequestedOutput("RGBA")]

        def infer() -> Any:
            if self.protocol == "grpc":
                return self.client.infer(
                    family, tensors, outputs=outputs, client_timeout=self.timeout_s
                )
            return self.client.infer(family, tensors, outputs=outputs)

        try:
            result = retry_transient(infer, self.retry_s, f"Triton {family}")
        except InferenceServerException as exc:
            raise RenderBackendError(f"Triton {family}: {exc.message()}") from exc
        except ServiceUnavailable as exc:
            raise RenderBackendError(f"Triton {family} unreachable: {exc}") from exc
        rgba: np.ndarray = result.as_numpy("RGBA")
        return rgba

    def close(self) -> None:
        """Close the client's connections."""
        self.client.close()


def is_transient(exc: BaseException) -> bool:
    """Whether a Triton call failed because the server is away or restarting."""
    if isinstance(exc, OSError):  # refused, reset, unreachable: the server is not there
        return True
    text = str(getattr(exc, "message", lambda: "")() or exc).lower()
    return any(word in text for word in _TRANSIENT)


def retry_transient(
    call: Callable[[], Any], budget_s: float, what: str, backoff_s: float = 0.5
) -> Any:
    """`call()`, retried with doubling backoff (to 5 s) while Triton is away, for `budget_s`."""
    return retry_through_outage(
        call, budget_s, backoff_s, what=what, classify=lambda e: TRITON if is_transient(e) else None
    )


def build_backend(settings: Settings, store: ObjectStore) -> FrameBackend:
    """The backend the settings name (`TH_RENDER_BACKEND`)."""
    if settings.render_backend == "triton":
        return TritonBackend(
            settings.triton_url, settings.triton_protocol, retry_s=settings.triton_retry_s
        )
    cache = AvatarCache(
        store, settings.avatar_cache_size, revalidate_s=settings.avatar_revalidate_s
    )
    return InProcessBackend(cache)
