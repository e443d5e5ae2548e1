"""Workflows built from the layers below: batches of models on Ray."""
