"""SigLIP: the vision tower with its attention-pooling head by default, the text tower on request.

Stored names are ``SiglipModel``'s: ``vision_model.*`` (its ``head.*`` pools the patches into the
image embedding; SigLIP has no separate projection), ``text_model.*`` (with its own ``head``),
``logit_scale`` and ``logit_bias``. ``SiglipVisionModel`` saves the vision tower without the
``vision_model.`` prefix, so its layout adds it.
"""

from __future__ import annotations

from streamconv.plans.base import Layout, Part, Plan
from streamconv.plans.probes import Probe, ProbeContext, two_tower_probes

__all__ = ["SiglipPlan"]


class SiglipPlan(Plan):
    """SigLIP image (and text) encoders."""

    name = "siglip"
    summary = (
        "SigLIP (SiglipModel, SiglipVisionModel): vision tower with its pooling head; text tower, "
        "logit_scale and logit_bias with --parts vision,text"
    )
    expected_assets = ("preprocessor_config.json",)
    model_types = frozenset({"siglip", "siglip_vision_model"})
    architectures = ("Siglip",)
    layouts = (
        Layout(
            "SiglipVisionModel",
            markers=("embeddings.patch_embedding.weight",),
            renames=((r"^", "vision_model."),),
        ),
        Layout("SiglipModel"),
    )
    parts = {
        "vision": Part(
            include=("vision_model.*",),
            required=(
                "vision_model.embeddings.patch_embedding.weight",
                "vision_model.encoder.layers.*",
                "vision_model.post_layernorm.weight",
            ),
        ),
        "text": Part(
            include=("text_model.*", "logit_scale", "logit_bias"),
            required=(
                "text_model.embeddings.token_embedding.weight",
                "text_model.encoder.layers.*",
                "text_model.final_layer_norm.weight",
            ),
        ),
    }
    default_parts = ("vision",)

    def probes(self, context: ProbeContext) -> list[Probe]:
        """8 varied images through the pooling head; 8 texts when the text tower was converted."""
        return two_tower_probes(context, "siglip_vision_model", ("vision_model.",), ("text_model.",))
