"""The REST API: ``create_app(settings)`` builds the FastAPI app (routes, schemas, the error
table, middleware, metrics, JSONL diagnostics). Contracts: ``docs/API_CONTRACTS.md``."""
