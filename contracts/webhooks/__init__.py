"""Webhooks: the event types work endings announce (`events`) and which destinations may receive them
(`destinations`: no private or metadata addresses unless allowed)."""
