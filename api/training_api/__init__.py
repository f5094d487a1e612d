"""The training API: the tinker SDK's protocol (docs/training-api.md), under /api/v1."""
