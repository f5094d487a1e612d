"""ftaas: a self-hosted, OpenAI-compatible fine-tuning service."""

__version__ = "0.1.0"
