"""Blob store: the bytes of input files, shard outputs and result files."""
