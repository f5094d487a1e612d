"""ftaas: a self-hosted, OpenAI-compatible fine-tuning service. This package is the top of the layering:
the launcher (`ftaas up`, `ftaas serve`, ...) and the command-line tools, which wire api, worker and serving
together (docs/architecture.md)."""

from contracts import __version__

__all__ = ["__version__"]
