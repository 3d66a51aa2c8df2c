-- Version 1: what the embedded store keeps, as tables. Records are the JSON of the
-- protocol's types, exactly as the embedded store keeps them.
CREATE TABLE agq_meta (
    key   text PRIMARY KEY,
    value bigint NOT NULL
);
INSERT INTO agq_meta (key, value) VALUES ('next_job', 1), ('audit_size', 0), ('generation', 0);

CREATE TABLE agq_jobs (
    id     bigint PRIMARY KEY,
    record bytea NOT NULL
);

CREATE TABLE agq_actions (
    id     text PRIMARY KEY,
    record bytea NOT NULL
);

CREATE TABLE agq_kept (
    digest text PRIMARY KEY
);

CREATE TABLE agq_state (
    key   text PRIMARY KEY,
    value bytea NOT NULL
);

CREATE TABLE agq_audit (
    seq   bigint PRIMARY KEY,
    job   bigint,
    entry bytea NOT NULL
);
CREATE INDEX agq_audit_by_job ON agq_audit (job, seq) WHERE job IS NOT NULL;

CREATE TABLE agq_audit_hashes (
    idx  bigint PRIMARY KEY,
    hash bytea NOT NULL CHECK (length(hash) = 32)
);

CREATE TABLE agq_checkpoints (
    size bigint PRIMARY KEY,
    note text NOT NULL
);
