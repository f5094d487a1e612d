"""Inference: the request schemas (`schemas`) and the interface the API's inference routes call (`backend`,
which `serving.service.InferenceService` implements)."""
