"""/v1/webhooks: endpoints (signing secrets shown once), their delivery logs."""
