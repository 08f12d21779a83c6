"""Discrete-event cluster simulator that replays traces through the real router and policies.

The simulator owns engines (prefill queues, continuous-batching decode, per-instance
KV caches that feed the real :class:`~scheduler.prefix.PrefixIndex`), a fabric
network model with max-min fair link sharing, and the metrics; every routing
decision is made by the packaged policies over a snapshot built in
:mod:`sim.adapters`.
"""
