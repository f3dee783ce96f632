"""`python -m greenroom.cli`: how the demo and the tests start worker processes."""

from greenroom.cli import main

main()
