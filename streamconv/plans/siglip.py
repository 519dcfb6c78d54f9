"""SigLIP: the vision tower with its attention-pooling head by default, the text tower on request.

Stored names are ``SiglipModel``'s: ``vision_model.*`` (its ``head.*`` pools the patches into the
image embedding; SigLIP has no separate projection), ``text_model.*`` (with its own ``head``),
``logit_scale`` and ``logit_bias``. ``SiglipVisionModel`` saves the vision tower without the
``vision_model.`` prefix, so its layout adds it.
"""

from __future__ import annotations

from typing import Any

from streamconv.plans.base import Layout, Part, Plan
from streamconv.plans.probes import Probe, ProbeContext, features_tensor, image_probe, text_batch

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
        config = context.model.config
        vision_only = config.model_type == "siglip_vision_model"
        vision = config if vision_only else config.vision_config
        probes = [image_probe(context, vision.num_channels, vision.image_size, needs=() if vision_only else ("vision_model.",))]
        if not vision_only:
            text = config.text_config
            batch = text_batch(
                context, text.vocab_size, text.max_position_embeddings, pad_id=getattr(text, "pad_token_id", None) or 0
            )

            def run(model: Any) -> Any:
                return features_tensor(model.get_text_features(**batch))

            probes.append(Probe("text", run, needs=("text_model.",)))
        return probes
