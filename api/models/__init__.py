"""/v1/models: base, fine-tuned and checkpoint models of the caller's project; deletion."""
