"""``python -m warmstart.cli``: the same as the ``warmstart`` console script."""

from warmstart.cli import main

main()
