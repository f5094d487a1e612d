"""The OpenAI-compatible control plane: one package per resource (router, schemas, service)."""
