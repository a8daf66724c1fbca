-- Events a consumer can never apply (a payload its tables cannot store, an
-- event it cannot decode), isolated so that it goes on with the rest of the log.
-- One row per consumer and tenant: the consumer holds back every later event of
-- that tenant (applying them out of order would be worse than not at all) until
-- an operator heals it; see README "Stalled consumers".
-- WARNING: consumer is a durable consumer-group name.
CREATE TABLE consumer_stalls (
    consumer    TEXT        NOT NULL,
    tenant_id   TEXT        NOT NULL,
    position    BIGINT      NOT NULL,
    event_id    TEXT        NOT NULL,
    event_type  TEXT        NOT NULL,
    stream_id   TEXT        NOT NULL,
    reason      TEXT        NOT NULL,
    held_back   BIGINT      NOT NULL DEFAULT 0,
    stalled_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, tenant_id)
);
