"""Renderer families."""
