"""Training: config adapters, train state and sharding, the step, optimiser, checkpoints, the loop."""
