"""Use-cases shared by the API and the CLI."""
