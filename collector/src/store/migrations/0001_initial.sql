-- The collector's store, schema version 1. Times are Unix ms, epochs and
-- times fit bigint; rewards (u128 micro-tokens) are decimal text.

CREATE TABLE reports (
    gateway text NOT NULL,
    epoch bigint NOT NULL,
    bytes bytea NOT NULL,
    PRIMARY KEY (gateway, epoch)
);

CREATE TABLE heads (
    gateway text PRIMARY KEY,
    epoch bigint NOT NULL,
    hash bytea NOT NULL,
    start_ms bigint NOT NULL
);

CREATE TABLE rewards (
    epoch bigint NOT NULL,
    gateway text NOT NULL,
    micro text NOT NULL,
    PRIMARY KEY (epoch, gateway)
);
CREATE INDEX rewards_by_gateway ON rewards (gateway);

CREATE TABLE decisions (
    gateway text NOT NULL,
    epoch bigint NOT NULL,
    decision text NOT NULL,
    PRIMARY KEY (gateway, epoch)
);

CREATE TABLE refusals (
    gateway text PRIMARY KEY,
    refusal text NOT NULL
);

CREATE TABLE challenges (
    id text PRIMARY KEY,
    gateway text NOT NULL,
    status text NOT NULL
        CHECK (status IN ('pending', 'sent', 'passed', 'failed', 'expired')),
    deadline_ms bigint NOT NULL,
    issued_ms bigint NOT NULL,
    decided_ms bigint,
    digest text NOT NULL,
    spec text NOT NULL
);
CREATE INDEX challenges_by_status ON challenges (gateway, status);
CREATE INDEX challenges_by_deadline ON challenges (gateway, deadline_ms);
CREATE INDEX challenges_decided ON challenges (deadline_ms)
    WHERE status IN ('passed', 'failed', 'expired');

CREATE TABLE rounds (
    gateway text PRIMARY KEY,
    next_ms bigint NOT NULL
);

CREATE TABLE gateways (
    id text PRIMARY KEY,
    cert_sha256 text UNIQUE,
    status text NOT NULL CHECK (status IN ('active', 'revoked', 'pending')),
    added_ms bigint NOT NULL,
    updated_ms bigint NOT NULL
);
