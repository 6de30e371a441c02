"""DICOMweb (PS3.18): the Studies Store Transaction (STOW-RS)."""
