"""The node agent: discovers the machine, reports usage, enforces task limits.

``discovery`` says what the node offers, ``usage`` samples what it is using
for heartbeats, and ``limits`` confines tasks (cgroup v2 where the agent may
write it, otherwise a memory watchdog).
"""
