"""Machinery every job shares at run time (output-folder leases, ...)."""
