"""The HTTP API between parties: hospital servers and the holders' wallets (issue 13)."""
