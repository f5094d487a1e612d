"""Adapter operations as plain modules: merges (linear, TIES, DARE, LiNeS) and compression (ComPEFT)."""
