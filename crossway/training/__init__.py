"""Training: the loop, the loss, the optimizer and schedule, and checkpoints."""
