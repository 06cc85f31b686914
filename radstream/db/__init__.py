"""PostgreSQL: versioned migrations, the sinks' writers, and the read API of dashboards and the web app."""
