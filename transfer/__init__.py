"""Carrying fine-tuning work from an OpenAI-compatible source (OpenAI itself, or another ftaas) to an ftaas:
plans of what the source's jobs would become here, copies of their files and jobs, and (later) distillation
of a source model. Client-side, through the official `openai` SDK on both ends; the CLI is `ftaas transfer`.

A domain library: it imports only `contracts` (and third-party libraries), never the server's packages, so
it runs anywhere the CLI runs, against any deployment.
"""
