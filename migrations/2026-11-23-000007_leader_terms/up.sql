-- Fencing tokens for leader election: one row per advisory lock id, whose term only grows.

CREATE TABLE leader_terms (
    lock_id     bigint      PRIMARY KEY,
    term        bigint      NOT NULL CHECK (term > 0),
    holder      text        NOT NULL,
    acquired_at timestamptz NOT NULL DEFAULT now()
);
