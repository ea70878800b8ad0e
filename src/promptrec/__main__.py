"""`python -m promptrec` runs the CLI."""

from promptrec.cli import main

main()
