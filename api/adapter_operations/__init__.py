"""/v1/adapter_operations: merges, LiNeS, compression, export and import of adapters (run by the worker)."""
