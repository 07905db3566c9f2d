"""Portrait video to training dataset: ingest checks, tracking, pose, masks, features, manifest."""
