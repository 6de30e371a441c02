"""Model registry: installed model versions, their roles (active, shadow, retired), routing
rules by DICOM attributes, and how well shadow versions agree with the active one."""
