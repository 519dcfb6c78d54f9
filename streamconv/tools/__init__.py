"""What users run on a finished output: export back to safetensors, verify its checksums, validate
it against the source model (the only place that imports torch and transformers)."""
