"""One router per resource; handlers parse, call the service or store, return a schema."""
