"""Losses, one file per paper's loss family; each term is a small module or pure function."""
