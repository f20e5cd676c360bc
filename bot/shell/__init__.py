"""``billing-bot shell``: the whole bot in a terminal, against the sandbox Atlas."""
