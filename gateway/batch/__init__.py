"""The batch tier: OpenAI's Files and Batch APIs (gateway/batch/api.py, on the REST edge) and the
Celery worker that runs each request of a batch through the same guard and pipeline as the
interactive edges (``python -m gateway.batch``). See docs/BATCH.md."""
