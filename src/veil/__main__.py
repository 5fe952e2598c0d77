"""``python -m veil`` runs the ``veil`` command."""

from veil.cli import main

main()
