"""Egress policy: the --allow/--deny rule grammar and matching."""
