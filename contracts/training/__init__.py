"""Fine-tuning: the training spec and its "auto" rules (`spec`), the contract between the API that validates
a job and the trainer that runs it, and the experiment trackers a job may ask for (`integrations`)."""
