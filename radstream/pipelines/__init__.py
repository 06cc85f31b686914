"""Pipeline files (pipelines/*.yaml): typed models, validation, loading."""
