"""slirpy: user-mode networking for unprivileged network namespaces."""

__version__ = "0.1.0"
