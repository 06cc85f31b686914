"""Local infrastructure without Docker: Kafka (KRaft), PostgreSQL, and the tools they need."""
