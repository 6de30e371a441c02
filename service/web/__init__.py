"""Web pages: the worklist and the study viewer (static; data comes from the API with the token)."""
