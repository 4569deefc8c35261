"""The control socket: the slirp4netns JSON API and slirpy's own commands."""
