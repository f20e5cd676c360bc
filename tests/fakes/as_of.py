"""``python -m tests.fakes.as_of ARGS…``: the ``billing-bot`` command line on the tests' clock.

The processes that tests start (``serve`` replicas killed and restarted, say) must read the
same time as the in-process bot under test and the sandbox's data, or a ``TEST_TODAY`` run
would give them another billing month. This is ``bot.cli.main`` with one difference: every
``Deps`` the command builds gets ``tests.fakes.clock.now`` as its clock, as the ``bot`` fixture
passes it in process. Signatures, leases' wall time and logs are untouched.
"""

from __future__ import annotations

import functools

import bot.runtime.app
from tests.fakes import clock

bot.runtime.app.build_deps = functools.partial(bot.runtime.app.build_deps, clock=clock.now)

if __name__ == "__main__":
    from bot.cli import main

    main()
