"""Renderer families, one folder each, behind the contract in `contract.py` and the registry."""
