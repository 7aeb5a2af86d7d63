-- Registered API keys (FOREMAN_AUTH_MODE=registered, docs/security.md).
--
-- Only a SHA-256 digest of each key is stored. The keys are 160 random bits, so a digest cannot be
-- reversed by guessing; a slow password hash (bcrypt, argon2) protects low-entropy secrets and would
-- only add tens of milliseconds of CPU to every uncached request.
--
-- The request role foreman_app gets no privilege on the table: it can neither list, add nor revoke
-- keys. It may only call foreman_api_key_lookup(digest), which answers for the one key whose digest
-- it already knows (that is, the key the caller presented). Keys are managed with `foreman keys`,
-- which connects as the database owner (the login that runs the migrations).

CREATE TABLE api_key (
    id          uuid    PRIMARY KEY,
    org_id      text    NOT NULL CHECK (org_id <> ''),
    name        text,
    key_hash    bytea   NOT NULL UNIQUE CHECK (octet_length(key_hash) = 32),
    -- The first characters of the key (fmn_<env>_<org>_ and 8 random characters), to recognise it.
    prefix      text    NOT NULL,
    created_at  bigint  NOT NULL,
    revoked_at  bigint
);

CREATE INDEX api_key_org_idx ON api_key (org_id, created_at);

-- No policy: a role other than the owner that were ever granted access would still see no row.
ALTER TABLE api_key ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON api_key FROM PUBLIC;

CREATE FUNCTION foreman_api_key_lookup(p_key_hash bytea)
RETURNS TABLE (id uuid, org_id text, key_hash bytea, revoked_at bigint)
LANGUAGE sql STABLE SECURITY DEFINER
AS $$
    SELECT k.id, k.org_id, k.key_hash, k.revoked_at
      FROM api_key k
     WHERE k.key_hash = p_key_hash
$$;

-- A SECURITY DEFINER function must not resolve names through a schema its caller controls
-- (a temporary table named api_key, for one): pin it to the schema of the table, pg_temp last.
DO $$
BEGIN
    EXECUTE format(
        'ALTER FUNCTION foreman_api_key_lookup(bytea) SET search_path = %I, pg_temp',
        current_schema()
    );
END
$$;

REVOKE ALL ON FUNCTION foreman_api_key_lookup(bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION foreman_api_key_lookup(bytea) TO foreman_app;
