-- The blinded multi-reader study (the paper's liver study): each exam has several segmentations
-- (the model's and humans'), each known to readers only by a salted hash; readers rate each.
--
-- seg_sources: who made segmentations (expert, novice, any named source), known only to the study
-- lead (admin). A source may name the calling AE title its segmentation tool sends from.
CREATE TABLE seg_sources (
    name              text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
    kind              text NOT NULL DEFAULT 'human' CHECK (kind IN ('human', 'model')),
    calling_ae_title  text UNIQUE CHECK (calling_ae_title ~ '^[ -~]{1,16}$' AND calling_ae_title !~ '\\'),
    description       text,
    created_by        text,
    created_at        timestamptz NOT NULL DEFAULT now()
);

-- One row per human segmentation object (DICOM SEG), keyed by its SOP Instance UID (a second copy
-- of the same object is the same row). status: 'valid' (checked against the source series),
-- 'pending' (the source series is not indexed yet: checked when it is), 'refused' (reason says why;
-- kept only for segmentations that arrived by C-STORE, whose bytes the SCP had already stored).
CREATE TABLE segmentations (
    seg_id                   text PRIMARY KEY,
    study_instance_uid       text NOT NULL,
    series_instance_uid      text,
    seg_series_instance_uid  text,
    source                   text REFERENCES seg_sources (name),
    origin                   text NOT NULL CHECK (origin IN ('upload', 'dimse')),
    calling_ae_title         text,
    seg_uri                  text NOT NULL,
    sha256                   text NOT NULL,
    blinding_hash            text NOT NULL UNIQUE,
    status                   text NOT NULL CHECK (status IN ('pending', 'valid', 'refused')),
    reason                   text,
    frames                   integer,
    volumes_ml               jsonb NOT NULL DEFAULT '{}'::jsonb,
    total_ml                 double precision,
    registered_by            text,
    received_at              timestamptz NOT NULL DEFAULT now(),
    validated_at             timestamptz,
    CHECK (status = 'refused' OR source IS NOT NULL)
);
CREATE INDEX segmentations_series_idx ON segmentations (series_instance_uid, status);
CREATE INDEX segmentations_study_idx ON segmentations (study_instance_uid);

-- A reader's rating of one segmentation (1 = unusable .. 5 = usable as is), on the review row
-- that carries the segmentation's hash.
ALTER TABLE reviews ADD COLUMN IF NOT EXISTS rating smallint CHECK (rating BETWEEN 1 AND 5);
CREATE INDEX IF NOT EXISTS reviews_hash_idx ON reviews (blinding_hash) WHERE blinding_hash IS NOT NULL;

-- For the study lead's dashboards (never for readers): every rating with its source unblinded.
CREATE VIEW v_blinded_ratings AS
SELECT rv.review_id, rv.result_id, rv.study_instance_uid, rv.pipeline, rv.reviewer, rv.blinding_hash,
       b.source, rv.rating, rv.time_spent_s, rv.comment, rv.submitted_at
FROM reviews rv
JOIN blinding_map b ON b.blinding_hash = rv.blinding_hash
WHERE rv.blinding_hash IS NOT NULL;
