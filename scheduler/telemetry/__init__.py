"""Transfer telemetry: per-tier latency metrics, drift alerts, cost-model calibration.

Pure library code (no HTTP): the service feeds :class:`Telemetry` and serves
:meth:`Telemetry.render_prometheus` and :meth:`Telemetry.alerts`. See docs/telemetry.md.
"""

from scheduler.telemetry.calibration import (
    CalibratedFigures,
    CalibrationConfig,
    Calibrator,
    TierCalibration,
    TierFigures,
    TierScales,
    reference_figures,
)
from scheduler.telemetry.drift import Alert, DriftConfig, DriftDetector, PairShare
from scheduler.telemetry.metrics import Counter, Gauge, Histogram, Registry
from scheduler.telemetry.samples import (
    DomainMapper,
    TransferSample,
    sample_from_record,
    sample_from_report,
)
from scheduler.telemetry.stats import KsResult, kolmogorov_sf, ks_2samp
from scheduler.telemetry.telemetry import Telemetry, TelemetryConfig, inflight_by_link

__all__ = [
    "Alert",
    "CalibratedFigures",
    "CalibrationConfig",
    "Calibrator",
    "Counter",
    "DomainMapper",
    "DriftConfig",
    "DriftDetector",
    "Gauge",
    "Histogram",
    "KsResult",
    "PairShare",
    "Registry",
    "Telemetry",
    "TelemetryConfig",
    "TierCalibration",
    "TierFigures",
    "TierScales",
    "TransferSample",
    "inflight_by_link",
    "kolmogorov_sf",
    "ks_2samp",
    "reference_figures",
    "sample_from_record",
    "sample_from_report",
]
