"""attnlab: train small self-attention models on toy tasks and watch what attention learns."""
