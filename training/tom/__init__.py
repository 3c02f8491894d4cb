"""Theory-of-mind tools."""
