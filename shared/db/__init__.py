"""Database layer: models, sessions and migrations."""
