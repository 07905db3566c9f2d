"""The generic trainer shell: per-step seeding, stages, EMA and checkpoints that resume exactly."""
