"""Stored chat completions (OpenAI's `store: true`): kept, listed, updated, deleted, exported as training data."""
