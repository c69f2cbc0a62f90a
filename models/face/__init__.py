"""face backbones (registered on import)."""
