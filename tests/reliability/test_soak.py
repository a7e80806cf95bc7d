"""Soak, short version: 30 s of steady load (with 1 in 10 requests malformed) on the shared
server through ``bench/reliability_soak.py``'s ``soak()``; RSS and open file descriptors must stay
bounded after warm-up. The 5-minute run is ``.venv/bin/python bench/reliability_soak.py``."""

from __future__ import annotations

import pytest

from bench.reliability_soak import soak
from tests.reliability.conftest import LiveServer, body_of, record_figure

pytestmark = [pytest.mark.slow, pytest.mark.integration]

SECONDS = 30.0
#: Growth allowed from the end of warm-up to the end of the run (a leak of even a few KiB per
#: request would exceed it over the ~hundreds of requests of 30 s).
MAX_RSS_GROWTH_MIB = 25.0
MAX_FD_GROWTH = 8


def test_30s_soak_keeps_memory_and_file_descriptors_bounded(live: LiveServer) -> None:
    result = soak(live.url, live.proc.pid, body_of(live, 50), seconds=SECONDS, clients=2, sample_s=1.0)
    assert result.seconds < SECONDS + 40  # bounded: the run stops on time
    assert result.requests > 20 and result.statuses[200] > 0 and result.statuses[400] > 0
    assert result.unexpected == 0, (result.statuses, result.errors[:3])
    growth_mib = result.rss_growth_bytes / 2**20
    assert growth_mib < MAX_RSS_GROWTH_MIB, [(s.t, s.rss_bytes) for s in result.samples]
    assert result.fd_growth <= MAX_FD_GROWTH, [(s.t, s.open_fds) for s in result.samples]
    record_figure("soak 30 s: requests (200 / 400 / other)",
                  f"{result.statuses[200]} / {result.statuses[400]} / {result.unexpected}", "other = 0")
    record_figure("soak 30 s: RSS growth after warm-up (MiB)", f"{growth_mib:+.1f}",
                  f"< {MAX_RSS_GROWTH_MIB:.0f} MiB")
    record_figure("soak 30 s: open-fd growth", f"{result.fd_growth:+d}", f"<= {MAX_FD_GROWTH}")
