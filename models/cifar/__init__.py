"""cifar backbones (registered on import)."""
