"""Where frames are rendered: one interface, in-process (embedded mode) or Triton (tritonclient)."""

from __future__ import annotations

from typing import Any, Literal, Protocol

import numpy as np

from services.renderer.avatars import AvatarCache
from shared.config import Settings
from shared.storage import ObjectStore


class RenderBackendError(RuntimeError):
    """The backend could not render (server down, model error)."""


class FrameBackend(Protocol):
    """Renders B frames of one avatar from per-frame conditions."""

    def render(
        self, avatar_id: str, poses: np.ndarray, audio: np.ndarray, eyes: np.ndarray
    ) -> np.ndarray:
        """(B, 4, 4), (B, K, W, D), (B,) -> (B, size, size, 4) uint8 premultiplied RGBA."""
        ...


class InProcessBackend:
    """The exported TorchScript renderer in this process, through the same avatar cache."""

    def __init__(self, cache: AvatarCache) -> None:
        self.cache = cache

    def render(
        self, avatar_id: str, poses: np.ndarray, audio: np.ndarray, eyes: np.ndarray
    ) -> np.ndarray:
        """Render with the cached export."""
        return self.cache.get(avatar_id).render(poses, audio, eyes)


class TritonBackend:
    """Frames from a Triton server's renderer model, over HTTP or gRPC."""

    def __init__(
        self,
        url: str,
        protocol: Literal["http", "grpc"] = "http",
        model: str = "radnerf",
        timeout_s: float = 120.0,
    ) -> None:
        self.model = model
        self.protocol = protocol
        self.timeout_s = timeout_s
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

    def render(
        self, avatar_id: str, poses: np.ndarray, audio: np.ndarray, eyes: np.ndarray
    ) -> np.ndarray:
        """One inference request carrying the B frames."""
        from tritonclient.utils import InferenceServerException

        b = len(poses)
        inputs = [
            self._input(
                "AVATAR_ID", np.array([[avatar_id.encode()]] * b, dtype=np.object_), "BYTES"
            ),
            self._input("POSE", np.ascontiguousarray(poses, np.float32), "FP32"),
            self._input("AUDIO", np.ascontiguousarray(audio, np.float32), "FP32"),
            self._input("EYE", np.ascontiguousarray(eyes, np.float32).reshape(b, 1), "FP32"),
        ]
        outputs = [self._mod.InferRequestedOutput("RGBA")]
        try:
            if self.protocol == "grpc":
                result = self.client.infer(
                    self.model, inputs, outputs=outputs, client_timeout=self.timeout_s
                )
            else:
                result = self.client.infer(self.model, inputs, outputs=outputs)
        except InferenceServerException as exc:
            raise RenderBackendError(f"Triton {self.model}: {exc.message()}") from exc
        rgba: np.ndarray = result.as_numpy("RGBA")
        return rgba

    def close(self) -> None:
        """Close the client's connections."""
        self.client.close()


def build_backend(settings: Settings, store: ObjectStore) -> FrameBackend:
    """The backend the settings name (`TH_RENDER_BACKEND`)."""
    if settings.render_backend == "triton":
        return TritonBackend(settings.triton_url, settings.triton_protocol)
    cache = AvatarCache(
        store, settings.avatar_cache_size, revalidate_s=settings.avatar_revalidate_s
    )
    return InProcessBackend(cache)
