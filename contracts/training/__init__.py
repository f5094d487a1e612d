"""Fine-tuning: the training spec, the contract between the API that validates a job and the trainer that runs it."""
