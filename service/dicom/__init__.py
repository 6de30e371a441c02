"""DICOM networking: the C-STORE/C-ECHO listener (``sightline dicom-listener``)."""
