"""Liveness, readiness (database, schema, storage; the broker degrades only) and metrics."""
