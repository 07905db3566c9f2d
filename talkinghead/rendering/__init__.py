"""Rays, the maximum occupancy grid, volume rendering and compositing."""
