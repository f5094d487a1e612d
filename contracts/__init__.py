"""The bottom layer: the contracts that api, worker and serving all stand on.

What lives here is shared meaning, not machinery: the error taxonomy (`contracts.errors`), settings
(`contracts.settings`), the adapter folder format (`adapters`), the training spec the API
validates and the trainer runs (`contracts.training`), evaluation specs and built-in suites
(`evals`) and the inference request schemas and service interface (`contracts.inference`).

The layering rule (docs/architecture.md; enforced by tests/test_layering.py): `contracts` imports nothing
else of ftaas, and nothing here imports torch at module level, so the API process can validate every
request without it.
"""

__version__ = "0.1.0"
