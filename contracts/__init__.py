"""The bottom layer: what crosses a process boundary, which api, worker and serving all stand on.

Only contracts, no machinery: the error taxonomy (`errors`), settings (`settings`), the training spec the
API validates and the trainer runs (`training`), uploaded files' formats and validation outcome (`files`),
the inference request schemas and the engine's interface (`inference`), and webhook events and destinations (`webhooks`).

The layering rule (docs/architecture.md; tests/test_layering.py): `contracts` imports no other ftaas
package, and no torch, numpy, transformers, peft or safetensors anywhere, so the API process validates
every request without them.
"""

__version__ = "0.1.0"
