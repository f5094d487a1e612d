"""The training API's wire (the tinker SDK's protocol, docs/training-api-wire.md): what crosses from a client
loop to the API and from the API to the worker that holds a training model."""
