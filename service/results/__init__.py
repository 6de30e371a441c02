"""AI results of a study as DICOM objects (IHE AI Results profile), built with highdicom.

Pure functions: each builder takes the source image (pydicom Dataset) and a
:class:`~service.results.findings.StudyFindings` and returns a new Dataset (TID 1500
Comprehensive 3D SR, RGB Secondary Capture, Grayscale Softcopy Presentation State,
Parametric Map). No database, no web: the worker stores and sends what they return.
"""
