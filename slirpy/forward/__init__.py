"""Forwards: the -L/-R spec grammar, PROXY-protocol headers, address translation."""
