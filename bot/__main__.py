"""``python -m bot``: the same command line as the ``billing-bot`` script."""

from bot.cli import main

main()
