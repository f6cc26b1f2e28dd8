"""The pure Raft consensus core: no sockets, reactor, clock, disk or global randomness."""
