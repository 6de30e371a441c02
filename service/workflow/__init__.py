"""Reading workflow: claims, reports, feedback, the audit trail, statistics and UPS-RS."""
