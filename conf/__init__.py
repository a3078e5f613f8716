"""The Hydra configuration of the `bilevel` app (config.yaml and one folder per group)."""
