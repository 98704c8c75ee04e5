"""tbps service: settings, database, search logic, HTTP API and the `tbps` command."""
