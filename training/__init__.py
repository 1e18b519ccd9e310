"""Offline training of stream-ae models: data, fitting, calibration, registry."""
