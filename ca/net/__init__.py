"""Listening sockets and the HTTP status server (metrics and health) of every process."""
