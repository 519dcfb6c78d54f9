"""CLIP: the vision tower and its projection by default, the text tower on request.

Stored names are ``CLIPModel``'s: ``vision_model.*``, ``visual_projection.weight``,
``text_model.*``, ``text_projection.weight``, ``logit_scale``. ``CLIPVisionModelWithProjection``
and ``CLIPVisionModel`` saved by transformers 4 use those names already; ``CLIPVisionModel``
saved by transformers 5 has no ``vision_model.`` prefix, so its layout adds it.
"""

from __future__ import annotations

from typing import Any

from streamconv.plans.base import Layout, Part, Plan, Probe, ProbeContext

__all__ = ["ClipPlan"]


class ClipPlan(Plan):
    """CLIP image (and text) encoders."""

    name = "clip"
    summary = (
        "CLIP (CLIPModel, CLIPVisionModel, CLIPVisionModelWithProjection): vision tower + "
        "visual_projection; text tower, text_projection, logit_scale with --parts vision,text"
    )
    expected_assets = ("preprocessor_config.json",)
    model_types = frozenset({"clip", "clip_vision_model"})
    architectures = ("CLIPModel", "CLIPVisionModel")
    layouts = (
        # transformers 5's CLIPVisionModel: embeddings.*, pre_layrnorm.*, encoder.*, post_layernorm.*
        Layout(
            "CLIPVisionModel (transformers 5)",
            markers=("embeddings.patch_embedding.weight",),
            renames=((r"^", "vision_model."),),
        ),
        # CLIPModel, CLIPVisionModelWithProjection, and transformers 4's CLIPVisionModel
        Layout("CLIPModel"),
    )
    parts = {
        "vision": Part(
            include=("vision_model.*", "visual_projection.*"),
            required=(
                "vision_model.embeddings.patch_embedding.weight",
                "vision_model.encoder.layers.*",
                "vision_model.post_layernorm.weight",
            ),
        ),
        "text": Part(
            include=("text_model.*", "text_projection.*", "logit_scale"),
            required=(
                "text_model.embeddings.token_embedding.weight",
                "text_model.encoder.layers.*",
                "text_model.final_layer_norm.weight",
            ),
        ),
    }
    default_parts = ("vision",)

    def probes(self, context: ProbeContext) -> list[Probe]:
        """Image features through the projection; text features when the text tower was converted."""
        torch, config = context.torch, context.model.config
        vision_only = config.model_type == "clip_vision_model"
        vision = config if vision_only else config.vision_config
        pixels = torch.randn(1, vision.num_channels, vision.image_size, vision.image_size, generator=context.generator())

        def image(model: Any) -> Any:
            if hasattr(model, "get_image_features"):
                return _tensor(model.get_image_features(pixel_values=pixels))
            return model(pixel_values=pixels)[0]

        probes = [Probe("image", image, needs=() if vision_only else ("vision_model.", "visual_projection."))]
        if not vision_only:
            ids = context.token_ids(config.text_config.vocab_size)
            probes.append(
                Probe("text", lambda m: _tensor(m.get_text_features(input_ids=ids)), needs=("text_model.", "text_projection."))
            )
        return probes


def _tensor(value: Any) -> Any:
    # transformers 5 may return a model output object from get_*_features.
    return value if hasattr(value, "shape") else value[0]
