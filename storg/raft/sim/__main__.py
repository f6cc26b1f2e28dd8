"""``python -m storg.raft.sim``: the simulator's command line (see :mod:`storg.raft.sim.sim`)."""

import sys

from storg.raft.sim.sim import main

sys.exit(main())
