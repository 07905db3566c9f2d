"""Triton python-backend model of one renderer family (copied as `<family>/1/model.py`).

The same file serves every family: it reads the input names from its generated config and,
for each request, the avatar's export manifest says which named inputs the renderer takes.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import torch
import triton_python_backend_utils as pb_utils  # provided by Triton's python backend stub

from services.renderer.avatars import AvatarCache
from shared.config import load_settings
from shared.storage import build_store
from talkinghead.devices import default_device


def _parameter(config: dict[str, Any], key: str, default: str) -> str:
    return str(config.get("parameters", {}).get(key, {}).get("string_value", default))


class TritonPythonModel:
    """Frames of any avatar of the family: each request is rendered by its avatar's export."""

    def initialize(self, args: dict[str, Any]) -> None:
        """Read the configuration, set up the avatar cache and the model's metrics."""
        config = json.loads(args["model_config"])
        self.family = str(config["name"])
        # The environment wins over the repository so operators tune without editing it.
        capacity = int(
            os.environ.get("TH_AVATAR_CACHE_SIZE") or _parameter(config, "avatar_cache_size", "8")
        )
        threads = int(
            os.environ.get("TH_TORCH_THREADS") or _parameter(config, "torch_threads", "0")
        )
        if threads > 0:
            torch.set_num_threads(threads)
        self.device = default_device()
        self.events = pb_utils.MetricFamily(
            name="talkinghead_renderer_avatar_cache_total",
            description="Avatar cache events of the renderer model (hit, load, evict)",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        self.counters = {
            event: self.events.Metric(labels={"model": self.family, "event": event})
            for event in ("hit", "load", "evict")
        }
        # Families must outlive their metrics: Triton refuses increments once a family is gone.
        self.frame_family = pb_utils.MetricFamily(
            name="talkinghead_renderer_frames_total",
            description="Frames rendered by the renderer model",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        self.frames = self.frame_family.Metric(labels={"model": self.family})
        settings = load_settings()
        self.cache = AvatarCache(
            build_store(settings), capacity, self.device, listener=self._count,
            revalidate_s=settings.avatar_revalidate_s,
        )  # fmt: skip

    def _count(self, event: str, avatar_id: str) -> None:
        self.counters[event].increment(1)

    def execute(self, requests: list[Any]) -> list[Any]:
        """One response per request, each rendered with its own avatar."""
        responses = []
        for request in requests:
            try:
                responses.append(pb_utils.InferenceResponse(output_tensors=[self._render(request)]))
            except Exception as exc:  # one bad request must not fail the batch it came in
                responses.append(
                    pb_utils.InferenceResponse(
                        output_tensors=[],
                        error=pb_utils.TritonError(f"{type(exc).__name__}: {exc}"),
                    )
                )
        return responses

    def _render(self, request: Any) -> Any:
        def read(name: str) -> np.ndarray:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise ValueError(f"the request lacks input {name}")
            array: np.ndarray = tensor.as_numpy()
            return array

        ids = {
            bytes(v).decode() if isinstance(v, bytes) else str(v) for v in read("AVATAR_ID").ravel()
        }
        if len(ids) != 1:
            raise ValueError("one request carries the frames of one avatar")
        avatar = self.cache.get(ids.pop())
        if avatar.family != self.family:
            raise ValueError(f"avatar of family {avatar.family!r} sent to model {self.family!r}")
        inputs = {}
        for spec in avatar.inputs:
            value = read(spec.name.upper())
            inputs[spec.name] = value.reshape(len(value), *spec.shape)
        rgba = avatar.render(inputs)
        self.frames.increment(len(rgba))
        return pb_utils.Tensor("RGBA", rgba)

    def finalize(self) -> None:
        """Release the loaded avatars."""
        self.cache = None  # type: ignore[assignment]
