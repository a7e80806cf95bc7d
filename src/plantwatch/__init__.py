"""plantwatch: keeps an industrial-telemetry anomaly detector healthy from raw data to a monitored service.

Importing the package switches every library's telemetry off first, so that nothing we import
(Prefect, BentoML, Evidently, GX) ever tries the network.
"""

from plantwatch.offline import disable_telemetry

disable_telemetry()

__version__ = "0.1.0"
