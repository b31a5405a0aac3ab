"""Metadata store: files, batches and shards in SQL (SQLite or PostgreSQL)."""
