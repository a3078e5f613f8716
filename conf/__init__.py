"""The Hydra configuration of the `bilevel` app (config.yaml and one folder per group).

Importing it registers the typed schema of the top-level keys (``base_config``)."""

from bilevel.schema import register

register()
