"""Scheduling policies: the plugin contracts, the registry (with entry-point plugins),
versioned policy documents and the built-in plugins. Pure code over the immutable
snapshot of :mod:`policies.snapshot`; imports nothing of toposched but ``topology``.
"""
