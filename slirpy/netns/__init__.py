"""Namespaces: joining a guest's to open its tap, and making new ones for `slirpy run`."""
