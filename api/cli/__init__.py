"""The ``toposched`` command line: one module per command group, plain argparse."""
