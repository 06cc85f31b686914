-- Reference segmentations: a source of kind 'reference' (a validation set's ground truth, e.g.
-- Colin27's BET brain mask) sends DICOM SEGs like any segmentation source; `radstream report`
-- gives each pipeline's agreement with them (Dice and volume per label). A reference source is
-- never a reader-facing segmentation of a blinded case.
ALTER TABLE seg_sources DROP CONSTRAINT IF EXISTS seg_sources_kind_check;
ALTER TABLE seg_sources ADD CONSTRAINT seg_sources_kind_check CHECK (kind IN ('human', 'model', 'reference'));
