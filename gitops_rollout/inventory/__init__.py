"""Inventory stage: which versions of each model exist in each cluster, and which are Ready."""
