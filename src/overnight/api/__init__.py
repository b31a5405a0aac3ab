"""The HTTP surface: Gemini's batch, files and models API."""
