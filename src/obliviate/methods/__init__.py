"""Unlearning methods: a registry (registry.py), one run pipeline (pipeline.py), one file per method."""
