"""The ``stream-ae`` command line: one module per command, wired in :mod:`stream_ae.cli.app`."""
