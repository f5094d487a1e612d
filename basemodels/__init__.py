"""Base models: the registry from settings (importable without torch), the offline demo model, and the
safe loader (safetensors only, no remote code)."""
