"""Allow `python -m edgebox`."""

from edgebox.cli import main

main()
