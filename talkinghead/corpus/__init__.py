"""Multi-speaker corpora: format, builder, reader, synthetic identities."""
