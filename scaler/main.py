"""``berth scaler``: the scaling loop."""

from __future__ import annotations

from broker.connection import connected
from scaler.loop import Scaler
from shared.metrics import serve as serve_metrics
from shared.runner import OnStop, configure_logging, run_service
from shared.settings import ScalerSettings
from workers import tracing


def main(settings: ScalerSettings | None = None) -> None:
    settings = settings or ScalerSettings()
    configure_logging(settings.log_level, "scaler", settings.log_format)
    tracing.configure("berth-scaler")
    serve_metrics(settings.metrics_host, settings.metrics_port, "scaler")

    async def run(on_stop: OnStop) -> None:
        async with connected(
            settings.nats_url,
            "berth-scaler",
            timeout=settings.nats_timeout,
            replicas=settings.nats_replicas,
        ) as broker:
            scaler = Scaler(settings, broker)
            on_stop(scaler.shutdown)
            await scaler.run()

    run_service(run)
