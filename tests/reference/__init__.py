"""Independent references the explanation engine is checked against (test-only; never imported by the product)."""
