"""05 prediction: findings for new image files."""
