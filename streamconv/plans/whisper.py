"""Whisper: the audio encoder by default, the decoder on request.

Both layouts store the same names: ``WhisperForConditionalGeneration``'s ``model.`` prefix is
removed, so the encoder's tensors are ``encoder.*`` and the decoder's ``decoder.*`` (plus
``proj_out.weight`` when the checkpoint stores it; transformers ties it to
``decoder.embed_tokens.weight`` and does not save it). ``embed_positions`` becomes
``position_embedding``, as the old Whisper script named it.
"""

from __future__ import annotations

from streamconv.plans.base import Layout, Part, Plan
from streamconv.plans.registry import register

__all__ = ["WhisperPlan"]


@register
class WhisperPlan(Plan):
    """Whisper speech encoder (and decoder)."""

    name = "whisper"
    summary = (
        "Whisper (WhisperForConditionalGeneration, WhisperModel): encoder.*, embed_positions "
        "renamed position_embedding; decoder.* and proj_out with --parts encoder,decoder"
    )
    model_types = frozenset({"whisper"})
    architectures = ("Whisper",)
    layouts = (
        Layout(
            "WhisperForConditionalGeneration",
            markers=("model.encoder.*", "model.decoder.*"),
            renames=((r"^model\.", ""),),
        ),
        Layout("WhisperModel"),
    )
    parts = {
        "encoder": Part(
            include=("encoder.*",),
            required=(
                "encoder.conv1.weight",
                "encoder.conv2.weight",
                "encoder.embed_positions.weight",
                "encoder.layers.*",
            ),
        ),
        "decoder": Part(
            include=("decoder.*", "proj_out.*"),
            required=("decoder.embed_tokens.weight", "decoder.embed_positions.weight", "decoder.layers.*"),
        ),
    }
    default_parts = ("encoder",)
    renames = ((r"\.embed_positions\.", ".position_embedding."),)
