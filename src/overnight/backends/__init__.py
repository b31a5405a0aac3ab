"""Model backends: one narrow interface, many engines."""
