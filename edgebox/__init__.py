"""EdgeBox: an offline-first evidence appliance for vehicles and stations."""

__version__ = "0.1.0"
