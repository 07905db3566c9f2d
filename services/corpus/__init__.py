"""Corpus builds: listing sources, leasing clips, the build stages."""
