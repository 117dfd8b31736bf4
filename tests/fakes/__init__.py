"""Fakes for the failures a real server cannot produce on demand."""
