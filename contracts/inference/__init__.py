"""Inference: the request schemas (`schemas`), the interface the API's inference routes call (`backend`,
which `serving.service.InferenceService` implements), and how conversations with tools and participant
names are rendered for a model (`tools`), the same in training data and in requests."""
