"""Fine-tuning jobs in a worker. `preparation` (validating_files -> queued: files checked, "auto" resolved);
`runner` runs one claimed job: `plan` (what it trains), `workspace` (its local directory and inputs),
`execution` (encode, fit memory, train), `control` (the trainer's view of the job: events, pause, cancel,
checkpoints), `events`, `group` and `launch` (data-parallel processes), `publishing` (the model, the results
file of `results`, `succeeded`), `lease` (the lease kept alive), `tracking` (W&B, MLflow)."""
