-- Version 2: the serving lease. One agq serves the database at a time: the node named in
-- this row's one line, until `until` (the database's clock), which it renews. Another
-- takes the row once `until` has passed, with the next generation, which every batch
-- checks: a node whose place was taken writes nothing more.
CREATE TABLE agq_serving (
    one        boolean PRIMARY KEY DEFAULT true CHECK (one),
    generation bigint NOT NULL,
    node       text NOT NULL,
    until      timestamptz NOT NULL
);
INSERT INTO agq_serving (generation, node, until)
    SELECT value, '', '-infinity' FROM agq_meta WHERE key = 'generation';
DELETE FROM agq_meta WHERE key = 'generation';
