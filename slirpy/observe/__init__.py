"""What slirpy shows of itself: the event stream, packet capture, metrics (issue #14).

Runtime-level: these modules own files and listeners; the sans-IO core only counts and
reports, and pays nothing when none of them is on.
"""
