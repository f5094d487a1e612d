"""Training-file validation in the worker: line-numbered errors, the format decided, examples counted."""
