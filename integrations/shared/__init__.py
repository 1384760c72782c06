"""Parts shared by the integrations: request validation and the HTTP API factories."""
