-- No JIT compilation for Foreman's statements. PostgreSQL compiles a plan whose estimated cost
-- passes jit_above_cost (100,000); a batch insert's custom plan estimated a parent lookup at 500
-- times its cost and passed it, and compiling took 1.1-2.2 s of CPU per statement (the statement
-- itself: 45-65 ms), so `POST /tasks/batch` ran at 1,500 instead of 14,000 tasks/s after a large
-- run (foreman bench, api_batch_enqueue after drain_postgres). Short OLTP statements never win
-- that time back. Set for the database, so every connection (the server's, PgBouncer's, the
-- bench's) has it without a startup parameter; the migration's role must own the database or be
-- a superuser, otherwise this says so and the operator sets jit = off in postgresql.conf.
DO $$
BEGIN
    EXECUTE format('ALTER DATABASE %I SET jit = off', current_database());
EXCEPTION WHEN insufficient_privilege THEN
    RAISE WARNING 'could not turn JIT off for database %: set jit = off in postgresql.conf',
        current_database();
END
$$;
