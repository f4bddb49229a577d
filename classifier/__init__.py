"""Difficulty classifiers (simple / medium / complex) and the routing policy built on them."""
