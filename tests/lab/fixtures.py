"""Pytest fixtures for lab smbd instances, and the skip-locally/fail-in-CI rule."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.lab.samba import LabUnavailable, SambaServer

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> None:
    """Skip locally, fail in CI, when a lab server cannot be had."""
    if IN_CI:
        pytest.fail(f"lab server unavailable in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture
def samba_factory(tmp_path):
    """Start any number of independent smbd instances; all are stopped at the end.

    ``samba_factory("src", shares=("data", "docs"), **{"read only": "no"})`` returns a
    running ``SambaServer`` whose shares live under tmp_path.
    """
    started: list[SambaServer] = []

    def start(name: str = "lab", shares: tuple[str, ...] = ("data",), **share_options) -> SambaServer:
        try:
            server = SambaServer(name, tmp_path / f"samba-{name}-{len(started)}")
        except LabUnavailable as exc:
            unavailable(str(exc))
        for share in shares:
            server.add_share(share, **share_options)
        started.append(server)
        try:
            return server.start()
        except LabUnavailable as exc:
            unavailable(str(exc))

    yield start
    for server in started:
        server.stop()  # its files stay in tmp_path for a look after a failure
        shutil.rmtree(server.sockets, ignore_errors=True)


@pytest.fixture
def samba_pair(samba_factory):
    """A source and a destination smbd, each with a share named ``data``."""
    return samba_factory("src"), samba_factory("dst")
