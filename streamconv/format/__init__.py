"""The on-disk format, both directions: byte planes, their coders, the Parquet writer and reader,
split outputs and their index, and the output folder itself (staged under a temporary name,
replaced atomically). Imports nothing from the checkpoint or pipeline side."""
