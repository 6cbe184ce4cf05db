-- Budget admission: spend and reservations per budget and window, and the reservations
-- themselves. Counters are exact decimals (numeric), so a reservation added and taken away
-- again leaves exactly what was there. A new UTC day or month is a new counter row; rows
-- are never reset in place.

CREATE TABLE budget_counters (
    budget_id      varchar(64) NOT NULL REFERENCES cost_budgets (id) ON DELETE CASCADE,
    period         varchar(8)  NOT NULL CHECK (period IN ('daily', 'monthly')),
    -- The UTC day, or the first day of the UTC month.
    window_start   date        NOT NULL,
    spent_cents    numeric     NOT NULL DEFAULT 0 CHECK (spent_cents >= 0),
    reserved_cents numeric     NOT NULL DEFAULT 0 CHECK (reserved_cents >= 0),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (budget_id, period, window_start)
);

CREATE TABLE budget_reservations (
    id              varchar(64)   PRIMARY KEY,
    tenant_id       varchar(64)   NOT NULL,
    request_id      varchar(64)   NOT NULL,
    feature_tag     varchar(128),
    user_id         varchar(64),
    estimated_cents numeric       NOT NULL CHECK (estimated_cents >= 0),
    -- The budgets charged, in key order; each one's daily counter of `day` and monthly
    -- counter of `month`.
    budget_ids      text[]        NOT NULL,
    day             date          NOT NULL,
    month           date          NOT NULL,
    status          varchar(16)   NOT NULL DEFAULT 'held'
                    CHECK (status IN ('held', 'settled', 'released', 'expired')),
    expires_at      timestamptz   NOT NULL,
    created_at      timestamptz   NOT NULL DEFAULT now(),
    closed_at       timestamptz,
    actual_cents    double precision,
    cost_record_id  varchar(64),
    CONSTRAINT uq_budget_reservations_request UNIQUE (tenant_id, request_id)
);
-- reclaim_expired: held reservations by expiry.
CREATE INDEX ix_budget_reservations_held_expiry
    ON budget_reservations (expires_at) WHERE status = 'held';
