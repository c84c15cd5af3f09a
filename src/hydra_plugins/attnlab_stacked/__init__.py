"""hydra/launcher=stacked: a sweep's same-shape jobs trained together as one stacked model (attnlab.stacked)."""
