"""Uploaded files: the training-data formats (`formats`) and what validating a file produces
(`validation`); the validator itself runs in the worker (worker.files.validation)."""
