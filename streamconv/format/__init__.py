"""The on-disk format, both directions: byte planes, their coders, the Parquet writer and reader,
split outputs and their index. Imports nothing from the checkpoint or pipeline side."""
