"""Live presence: sockets' view, fan-out, frames, sync and the online ledger."""
