"""imagenet backbones (registered on import)."""
