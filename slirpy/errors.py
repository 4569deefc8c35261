"""The two kinds of error a user may see (a bug is neither: it keeps its traceback)."""


class SlirpyError(Exception):
    """A mistake of the user or a refusal of the environment: one line, no traceback."""

    exit_code = 1


class UsageError(SlirpyError):
    """A bad flag, spec or config value."""

    exit_code = 1  # slirp4netns exits 1 on every usage error; tools compare


class SetupError(SlirpyError):
    """The environment refused: no such namespace, no /dev/net/tun, a bind that failed."""

    exit_code = 1
