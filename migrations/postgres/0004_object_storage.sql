-- Recordings on S3-compatible object storage (docs/recording.md, "Object storage").
-- object_key: the object holding the file once uploaded (NULL: a file in the node's
-- MCU_RECORDINGS_DIR). upload: while it records, the running multipart upload as JSON
-- {"upload_id", "part_size", "etags"}: the parts that reached the store, so that another node can
-- finish the upload if this one dies.
ALTER TABLE recordings ADD COLUMN object_key TEXT;
ALTER TABLE recordings ADD COLUMN upload TEXT;
