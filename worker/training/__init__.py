"""Training as plain modules: the job spec and `"auto"` rules (spec), tokenisation with assistant-only
labels (data), and the LoRA SFT/DPO loop with resumable checkpoints (trainer)."""
