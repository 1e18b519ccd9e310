"""Offline evaluation of detectors: NAB scoring and the runs that feed it."""
