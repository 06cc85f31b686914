-- Web review app: where each source instance of a request lies in the store, so the result page
-- can render the source images under the segmentation overlay. Filled from InferenceRequested
-- (radstream.web.instances.index_request; the results sink can call it with each request).
CREATE TABLE IF NOT EXISTS source_instances (
    sop_instance_uid       text PRIMARY KEY,
    series_instance_uid    text NOT NULL,
    study_instance_uid     text NOT NULL,
    sop_class_uid          text,
    store_uri              text NOT NULL,
    instance_number        integer,
    position_along_normal  double precision,
    received_at            timestamptz,
    stored_at              timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS source_instances_series_idx ON source_instances (series_instance_uid);
CREATE INDEX IF NOT EXISTS source_instances_study_idx ON source_instances (study_instance_uid);
