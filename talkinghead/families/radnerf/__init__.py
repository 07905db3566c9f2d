"""The radnerf family: RAD-NeRF avatars trained per identity from a portrait video."""
