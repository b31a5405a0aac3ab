"""The batch engine: admission, shard execution, finalize, workers."""
