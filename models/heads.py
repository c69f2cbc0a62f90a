"""Margin and linear heads (registered on import). Filled in by the face-models work."""
