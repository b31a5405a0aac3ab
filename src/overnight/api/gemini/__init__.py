"""Routes of the Gemini API dialect."""
