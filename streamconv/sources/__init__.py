"""Checkpoints in: find the weight files of a folder, a shard index or a hub snapshot, parse their
headers, and describe every tensor as a lazy :class:`~streamconv.sources.checkpoint.TensorRef`
that reads nothing until asked."""
