"""Accounts: sign-up, login, sessions and password hashing (the use cases)."""
