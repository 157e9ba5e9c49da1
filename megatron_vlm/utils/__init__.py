"""Small shared utilities with no model or data-flow specifics (e.g. openai_client)."""
