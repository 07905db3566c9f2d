"""Render-time controls shared by families: head pose and eye tracks, audio windows per frame."""
