"""One module per ``router`` subcommand; see :mod:`router.cli`.

Each command parses its flags and calls a part; registration stays cheap (heavy imports happen
inside ``run``). The commands sit above every package (they may import any of them) and wire
the parts together: ``router serve`` injects the promotion view into the sidecar, which may not
import promotion itself.

Start reading at :mod:`router.cli`, then the command you run (e.g. :mod:`.serve`, :mod:`.analyze`).
"""
