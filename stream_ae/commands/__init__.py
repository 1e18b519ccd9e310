"""Subcommands of the stream-ae CLI, one module each."""
