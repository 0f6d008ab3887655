"""Sub-commands of the difframe command line (imported only when chosen)."""
