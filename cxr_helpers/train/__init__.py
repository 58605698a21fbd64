"""02 training: the loop, losses and the training report helpers."""
