"""Operator commands: ``presence users ...`` and ``presence db ...``."""
