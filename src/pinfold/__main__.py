"""`python -m pinfold` runs the command line."""

from pinfold.cli import main

main()
