"""Durable storage: write-ahead log, hard state, snapshots, chunks, identity.

Everything here does blocking file I/O and knows nothing of the reactor: the
node calls it from a thread pool so fsync never stalls the event loop.
"""
