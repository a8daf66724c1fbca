-- Each process caches the API keys it authenticated (handlers.KeyStore). Every
-- change of a key, a revocation above all, is notified so that every process
-- forgets what it cached; NOTIFY is delivered at commit. notify_outbox (0003)
-- notifies the channel named by its argument.
-- WARNING: the channel name "twofactor_api_keys" is durable (handlers.APIKeysChannel).
CREATE TRIGGER api_keys_notify
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION notify_outbox('twofactor_api_keys');
