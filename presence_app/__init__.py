"""Presence: domain and infrastructure (config, accounts, presence, brokers, storage)."""
