"""Fixtures of real servers for the whole suite.

A server that cannot run here skips the test on a developer's machine but fails it in CI
(``CI=true``), the way dramatiq's fixtures do: a green CI must mean the real thing ran.
Each lab module in tests/lab/ holds the fixtures of one kind of server; they are loaded
here as plugins.
"""

from __future__ import annotations

pytest_plugins = [
    "tests.lab.fixtures",
    "tests.lab.services",
    "tests.lab.workers",
    "tests.lab.sshd",
    "tests.lab.netns",
]
