"""Adapter operations as a worker runs them (claim, read the inputs, operate, publish the new model,
settle). The operations themselves live in `adapters/`."""
