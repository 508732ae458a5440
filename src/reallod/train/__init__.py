"""Training Real-Model: dataset and sampling, augmentation, losses, the accelerate loop, checkpoints,
periodic evaluation."""
