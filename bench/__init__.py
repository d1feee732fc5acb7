"""Benchmarks that run the real parts (Mosquitto, the fleet, a database) on this machine.

Each is a module run as ``python -m bench.<name>``; its last line of output is one
JSON object, so CI and people can compare runs.
"""
