"""Applying a bundle to inputs: finding the cases of an input, loading a bundle and segmenting, writing outputs."""
