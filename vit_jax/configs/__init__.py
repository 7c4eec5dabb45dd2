"""Model configurations (the registry of named models)."""
