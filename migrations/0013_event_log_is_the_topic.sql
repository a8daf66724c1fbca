-- The event log is the bus's topic (eventstore.LogSchema): subscribers read the
-- events table itself, so the outbox, which held a copy of every event, goes.
--
-- A consumer group's offset was a row of the outbox, (transaction id, outbox
-- offset); it becomes an event, (transaction id, position): the last event of
-- the prefix of the log the group has acknowledged. That prefix is every event
-- of a transaction before the acknowledged one (the subscriber reads a
-- transaction only once every older one has ended, so all of those were there
-- and delivered) and, within the acknowledged transaction, the events whose
-- outbox row came at or before the acknowledged row (Append wrote a
-- transaction's event rows and outbox rows in the same order, so those are its
-- first events). A group whose prefix holds no event at all starts at (0, 0),
-- as a group that never acknowledged anything does. So no event is delivered
-- again to a group, and none is skipped.
--
-- The tables are locked first: a consumer of an older process still running
-- waits (its acknowledgement would carry an outbox offset), and fails once the
-- outbox is gone rather than acknowledge in the old terms.
LOCK TABLE "watermill_offsets_twofactor_events", "watermill_twofactor_events" IN ACCESS EXCLUSIVE MODE;

CREATE TEMPORARY TABLE offset_translation ON COMMIT DROP AS
SELECT g.consumer_group, last.transaction_id, last.position
FROM "watermill_offsets_twofactor_events" g
LEFT JOIN LATERAL (
    SELECT x.transaction_id, x.position FROM (
        (SELECT e.transaction_id, e.position
         FROM "watermill_twofactor_events" o
         JOIN events e ON e.transaction_id = o.transaction_id AND e.event_id::text = o.uuid
         WHERE o.transaction_id = g.last_processed_transaction_id AND o."offset" <= g.offset_acked
         ORDER BY e.position DESC LIMIT 1)
        UNION ALL
        (SELECT e.transaction_id, e.position FROM events e
         WHERE e.transaction_id < g.last_processed_transaction_id
         ORDER BY e.transaction_id DESC, e.position DESC LIMIT 1)
    ) x
    ORDER BY x.transaction_id DESC, x.position DESC LIMIT 1
) last ON true;

UPDATE "watermill_offsets_twofactor_events" g
SET last_processed_transaction_id = coalesce(t.transaction_id, '0'),
    offset_acked = coalesce(t.position, 0)
FROM offset_translation t
WHERE t.consumer_group = g.consumer_group;

-- Wake-ups now come from the log: one notification per inserting statement,
-- delivered at commit (see 0003).
DROP TRIGGER watermill_twofactor_events_notify ON "watermill_twofactor_events";
CREATE TRIGGER events_notify
    AFTER INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION notify_outbox('twofactor_events');

DROP TABLE "watermill_twofactor_events";
