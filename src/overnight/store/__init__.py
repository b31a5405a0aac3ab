"""Metadata store: files, uploads, batches, API keys and the work queue in SQL (SQLite or PostgreSQL)."""
