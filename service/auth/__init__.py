"""Bearer-token authentication with roles."""
