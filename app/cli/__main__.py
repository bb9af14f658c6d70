"""`python -m app.cli`: the `stockout` command."""

from app.cli.main import main

main()
