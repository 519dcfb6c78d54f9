"""CLIP: the vision tower and its projection by default, the text tower on request.

Stored names are ``CLIPModel``'s: ``vision_model.*``, ``visual_projection.weight``,
``text_model.*``, ``text_projection.weight``, ``logit_scale``. ``CLIPVisionModelWithProjection``
and ``CLIPVisionModel`` saved by transformers 4 use those names already; ``CLIPVisionModel``
saved by transformers 5 has no ``vision_model.`` prefix, so its layout adds it.
"""

from __future__ import annotations

from streamconv.plans.base import Layout, Part, Plan
from streamconv.plans.probes import Probe, ProbeContext, two_tower_probes

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
        """8 varied images through the projection; 8 texts when the text tower was converted."""
        vision, text = ("vision_model.", "visual_projection."), ("text_model.", "text_projection.")
        return two_tower_probes(context, "clip_vision_model", vision, text)
