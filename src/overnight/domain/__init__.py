"""Pure types and rules: batch states, records, canonical requests and results."""
