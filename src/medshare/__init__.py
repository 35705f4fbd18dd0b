"""medshare: accountable, patient-controlled sharing of electronic medical records."""

__version__ = "0.1.0"
