"""``python -m gateway.batch``: a batch worker (Celery, Redis broker), the gateway's third edge."""

from __future__ import annotations

import os
import shutil
import tempfile

from gateway.batch.settings import BatchSettings
from mesh.logging import setup_logging
from mesh.settings import load_settings


def main() -> None:
    settings = load_settings(BatchSettings)
    setup_logging(settings.service_name, settings.log_level)
    # Pool processes count lines in files that the main process sums for /metrics
    # (prometheus_client's multiprocess mode); the variable must be set before
    # prometheus_client is first imported, hence the import below.
    metrics_dir = tempfile.mkdtemp(prefix="llmesh-batch-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        from gateway.batch.worker import run

        run(settings)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
