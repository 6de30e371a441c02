"""On-demand explanations: another CAM method or class for one frame, computed once by a worker."""
