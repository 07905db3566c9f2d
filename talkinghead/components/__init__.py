"""Building blocks shared by families: grids, audio network, rays, occupancy, volume, EMA."""
