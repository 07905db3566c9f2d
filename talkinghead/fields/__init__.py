"""Neural fields of the renderers: grid encoders, the audio network, head and torso fields."""
