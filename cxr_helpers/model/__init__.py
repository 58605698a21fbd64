"""The model: backbones, checkpoints with typed metadata, and the one inference path."""
