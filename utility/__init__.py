"""Small shared helpers: configuration, registries, errors, seeding, logging."""
