"""``python -m bilevel``: the same Hydra app as the ``bilevel`` command."""

from bilevel.cli import main

main()
