"""hydra/sweeper=finish: a stopped sweep's jobs left to do, launched in place (python scripts/train.py -m resume=SWEEP_DIR)."""
