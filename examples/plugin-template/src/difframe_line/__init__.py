"""Example difframe plugin package (see line.py)."""
