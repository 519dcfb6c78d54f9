"""Whisper: the audio encoder by default, the decoder on request.

Both layouts store the same names: ``WhisperForConditionalGeneration``'s ``model.`` prefix is
removed, so the encoder's tensors are ``encoder.*`` and the decoder's ``decoder.*`` (plus
``proj_out.weight`` when the checkpoint stores it; transformers ties it to
``decoder.embed_tokens.weight`` and does not save it). ``embed_positions`` becomes
``position_embedding``, as the old Whisper script named it.
"""

from __future__ import annotations

from typing import Any

from streamconv.plans.base import Layout, Part, Plan
from streamconv.plans.probes import BATCH, Probe, ProbeContext, log_mel_features, output_tensor

__all__ = ["WhisperPlan"]


class WhisperPlan(Plan):
    """Whisper speech encoder (and decoder)."""

    name = "whisper"
    summary = (
        "Whisper (WhisperForConditionalGeneration, WhisperModel): encoder.*, embed_positions "
        "renamed position_embedding; decoder.* and proj_out with --parts encoder,decoder"
    )
    expected_assets = ("preprocessor_config.json",)
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

    def probes(self, context: ProbeContext) -> list[Probe]:
        """Log-mel features of 8 synthetic signals through the encoder; with the decoder, 5-token prefixes."""
        torch, config = context.torch, context.model.config
        features = log_mel_features(context, config.num_mel_bins, 2 * config.max_source_positions)
        tokens = torch.randint(0, config.vocab_size, (BATCH, 4), generator=context.generator())
        start = torch.full((BATCH, 1), config.decoder_start_token_id)
        prefix = torch.cat([start, tokens], dim=1)

        def encoder(model: Any) -> Any:
            return model.get_encoder()(input_features=features).last_hidden_state

        def decoder(model: Any) -> Any:
            return output_tensor(model(input_features=features, decoder_input_ids=prefix))

        return [
            Probe("encoder", encoder, needs=("model.encoder.", "encoder.")),
            Probe("decoder", decoder, needs=("model.decoder.", "decoder.")),
        ]
