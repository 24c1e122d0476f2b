"""One module per ``router`` subcommand; see :mod:`router.cli`."""
