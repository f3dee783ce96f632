-- The claim on PostgreSQL: greenroom/storage/claim.py in one function, so that a claim is one
-- statement that is its own transaction (one round trip, where the Python claim takes eight).
-- Same decisions, same statements, same lock order (lanes, queues, tenants); read claim.py for
-- why each is so. A change to claim.py's decisions needs the same change here, in a new migration.

CREATE TYPE greenroom_candidate AS (
    seq bigint, priority integer, queue text, session_key text
);

CREATE FUNCTION greenroom_claim(
    p_worker text,
    p_queues text[],
    p_limit integer,
    p_lease double precision,
    p_now double precision,
    p_tenant_scan integer,
    p_start_margin double precision
) RETURNS SETOF runs LANGUAGE plpgsql AS $$
DECLARE
    -- The served queues (claim.py's _Plan), by position.
    q_name text[] := p_queues;
    q_allow double precision[] := array_fill(p_limit::double precision, ARRAY[cardinality(p_queues)]);
    q_lease double precision[] := array_fill(NULL::double precision, ARRAY[cardinality(p_queues)]);
    q_period double precision[] := array_fill(NULL::double precision, ARRAY[cardinality(p_queues)]);
    q_locked text[];             -- limited when read: locked, then read again
    q_capped text[] := '{}';     -- with a concurrency limit: their runs hold a slot
    -- Ready tenants first in turn (claim.py's _Tenant), by position.
    t_name text[] := '{}';
    t_weight double precision[] := '{}';
    t_pass double precision[] := '{}';
    t_room double precision[] := '{}';
    t_limited boolean[] := '{}';
    t_taken integer[] := '{}';
    t_served boolean[] := '{}';  -- out of the turn
    t_next integer[] := '{}';    -- its next candidate in cands; NULL: not read yet
    t_last integer[] := '{}';
    cands greenroom_candidate[] := '{}';
    -- What was chosen, in order.
    c_seq bigint[] := '{}';
    c_queue text[] := '{}';
    c_session text[] := '{}';
    c_tenant text[] := '{}';
    c_seconds double precision[] := '{}';
    limited_tenants text[];
    -- What was leased, and held by a pause.
    l_seq bigint[];
    h_seq bigint[];
    r record;
    i integer;
    best integer;
    open_queues text[];
    qn text;
    limit_now integer;
    found_cands greenroom_candidate[];
    cand greenroom_candidate;
    allow double precision;
    started bigint;
    n integer;
BEGIN
    -- 1. Queues: what their limits still allow (limited ones locked, then read again).
    FOR r IN SELECT * FROM queues WHERE name = ANY(p_queues) LOOP
        q_lease[array_position(q_name, r.name::text)] := r.lease_seconds;
    END LOOP;
    q_locked := ARRAY(
        SELECT name FROM queues WHERE name = ANY(p_queues)
        AND (concurrency IS NOT NULL OR rate_limit IS NOT NULL) ORDER BY name
    );
    FOR r IN SELECT * FROM queues WHERE name = ANY(q_locked) ORDER BY name FOR UPDATE LOOP
        i := array_position(q_name, r.name::text);
        q_lease[i] := r.lease_seconds;
        allow := p_limit;
        IF r.concurrency IS NOT NULL THEN
            allow := least(allow, r.concurrency - r.active);
            q_capped := array_append(q_capped, r.name::text);
        END IF;
        IF r.rate_limit IS NOT NULL AND r.rate_period <> 0 THEN
            SELECT COUNT(*) INTO started FROM queue_starts
            WHERE queue = r.name AND at > p_now - r.rate_period;
            allow := least(allow, r.rate_limit - started);
            q_period[i] := r.rate_period;
        END IF;
        q_allow[i] := greatest(allow, 0);
    END LOOP;
    IF NOT EXISTS (SELECT 1 FROM unnest(q_allow) AS a WHERE a > 0) THEN
        RETURN;
    END IF;

    -- 2. Tenants with ready runs, lowest pass first; those with a concurrency limit locked.
    FOR r IN
        SELECT t.name, t.weight, t.pass, t.concurrency FROM tenants t
        WHERE t.ready > 0 ORDER BY t.pass, t.name LIMIT p_tenant_scan
    LOOP
        t_name := array_append(t_name, r.name::text);
        t_weight := array_append(t_weight, greatest(r.weight, 1e-6));
        t_pass := array_append(t_pass, r.pass);
        t_room := array_append(t_room, 'Infinity'::double precision);
        t_limited := array_append(t_limited, r.concurrency IS NOT NULL);
        t_taken := array_append(t_taken, 0);
        t_served := array_append(t_served, false);
        t_next := array_append(t_next, NULL::integer);
        t_last := array_append(t_last, 0);
    END LOOP;
    FOR r IN
        SELECT t.name, t.concurrency, t.active FROM tenants t
        WHERE t.name = ANY(t_name) AND t.concurrency IS NOT NULL ORDER BY t.name FOR UPDATE
    LOOP
        t_room[array_position(t_name, r.name::text)] := r.concurrency - r.active;
    END LOOP;
    limited_tenants := ARRAY(
        SELECT t_name[j] FROM generate_subscripts(t_name, 1) AS j WHERE t_limited[j]
    );

    -- 3. Serve tenants in stride order until the slots or the allowances run out.
    WHILE cardinality(c_seq) < p_limit LOOP
        best := NULL;
        FOR j IN 1 .. cardinality(t_name) LOOP
            IF NOT t_served[j] AND (best IS NULL OR t_pass[j] < t_pass[best]) THEN
                best := j;
            END IF;
        END LOOP;
        EXIT WHEN best IS NULL;
        IF t_taken[best] >= t_room[best] THEN
            t_served[best] := true;
            CONTINUE;
        END IF;
        open_queues := ARRAY(
            SELECT q_name[j] FROM generate_subscripts(q_name, 1) AS j WHERE q_allow[j] > 0
        );
        EXIT WHEN cardinality(open_queues) = 0;
        IF t_next[best] IS NULL THEN
            -- Its best ready runs: free runs and heads of free lanes, one query per queue.
            found_cands := '{}';
            FOREACH qn IN ARRAY open_queues LOOP
                found_cands := found_cands || ARRAY(
                    WITH free AS (
                        SELECT seq, priority, queue, NULL AS session_key FROM runs
                        WHERE tenant = t_name[best] AND queue = qn AND state = 'queued'
                        AND session_key IS NULL ORDER BY priority DESC, seq
                        LIMIT p_limit - cardinality(c_seq) FOR UPDATE SKIP LOCKED
                    ), heads AS (
                        SELECT head_seq AS seq, head_priority AS priority, head_queue AS queue,
                        session_key FROM lanes
                        WHERE tenant = t_name[best] AND head_queue = qn
                        AND head_seq IS NOT NULL AND active < max_active
                        ORDER BY head_priority DESC, head_seq
                        LIMIT p_limit - cardinality(c_seq) FOR UPDATE SKIP LOCKED
                    )
                    SELECT ROW(seq, priority, queue, session_key)::greenroom_candidate
                    FROM (SELECT * FROM free UNION ALL SELECT * FROM heads) AS both_kinds
                );
            END LOOP;
            t_next[best] := cardinality(cands) + 1;
            cands := cands || ARRAY(
                SELECT c FROM unnest(found_cands) AS c ORDER BY c.priority DESC, c.seq
            );
            t_last[best] := cardinality(cands);
        END IF;
        WHILE t_next[best] <= t_last[best]
            AND q_allow[array_position(q_name, (cands[t_next[best]]).queue)] <= 0 LOOP
            t_next[best] := t_next[best] + 1;
        END LOOP;
        IF t_next[best] > t_last[best] THEN
            t_served[best] := true;
            CONTINUE;
        END IF;
        cand := cands[t_next[best]];
        t_next[best] := t_next[best] + 1;
        i := array_position(q_name, cand.queue);
        c_seq := array_append(c_seq, cand.seq);
        c_queue := array_append(c_queue, cand.queue);
        c_session := array_append(c_session, cand.session_key);
        c_tenant := array_append(c_tenant, t_name[best]);
        c_seconds := array_append(c_seconds, COALESCE(NULLIF(q_lease[i], 0), p_lease));
        q_allow[i] := q_allow[i] - 1;
        t_taken[best] := t_taken[best] + 1;
        t_pass[best] := t_pass[best] + 1.0 / t_weight[best];
    END LOOP;
    IF cardinality(c_seq) = 0 THEN
        RETURN;
    END IF;

    -- 4. The lease.
    WITH leased AS (
        UPDATE runs SET state = 'running', lease_owner = p_worker,
            lease_token = lease_token + 1, lease_expires_at = p_now + c.seconds,
            lease_seconds = c.seconds, started_at = COALESCE(started_at, p_now),
            updated_at = p_now, holds_queue_slot = runs.queue = ANY(q_capped),
            holds_tenant_slot = runs.tenant = ANY(limited_tenants)
        FROM unnest(c_seq, c_seconds) AS c(seq, seconds)
        WHERE runs.seq = c.seq AND runs.state = 'queued'
        RETURNING runs.seq
    )
    SELECT COALESCE(array_agg(seq), '{}') INTO l_seq FROM leased;

    -- 5. A run enqueued while its pause was being created can still be ready: never start it.
    h_seq := '{}';
    IF EXISTS (SELECT 1 FROM pauses) THEN
        WITH held AS (
            UPDATE runs SET state = 'paused', lease_owner = NULL, lease_expires_at = NULL,
                pause_requested = false, holds_queue_slot = false, holds_tenant_slot = false
            WHERE runs.seq = ANY(l_seq) AND EXISTS (
                SELECT 1 FROM pauses p
                WHERE (p.tenant = '*' OR p.tenant = runs.tenant) AND CASE p.scope
                    WHEN 'queue' THEN runs.queue = p.value
                    WHEN 'tenant' THEN runs.tenant = p.value
                    WHEN 'workflow' THEN runs.workflow = p.value
                    WHEN 'session' THEN runs.session_key = p.value
                    WHEN 'label' THEN (CAST(runs.labels AS jsonb) ->> p.label) = p.value
                END
            )
            RETURNING runs.seq, runs.id
        ), events AS (
            INSERT INTO run_events (run_id, at, state, reason)
            SELECT id, p_now, 'paused', 'paused' FROM held
        )
        SELECT COALESCE(array_agg(seq), '{}') INTO h_seq FROM held;
        l_seq := ARRAY(SELECT s FROM unnest(l_seq) AS s WHERE s <> ALL(h_seq));
    END IF;

    -- 6. Lanes, queues and tenants move on by what was leased (lock order: lanes, queues,
    -- tenants). A chosen head that was not leased is refreshed.
    FOR r IN
        SELECT DISTINCT c.tenant, c.session_key, c.seq = ANY(l_seq) AS leased
        FROM unnest(c_tenant, c_session, c_seq) AS c(tenant, session_key, seq)
        WHERE c.session_key IS NOT NULL ORDER BY c.tenant, c.session_key
    LOOP
        UPDATE lanes SET active = active + CASE WHEN r.leased THEN 1 ELSE 0 END,
            (head_seq, head_priority, head_queue) = (
                SELECT x.seq, x.priority, x.queue FROM runs x WHERE x.tenant = lanes.tenant
                AND x.session_key = lanes.session_key AND x.state = 'queued'
                ORDER BY x.priority DESC, x.seq LIMIT 1
            )
        WHERE tenant = r.tenant AND session_key = r.session_key;
    END LOOP;
    FOR r IN
        SELECT c.queue, COUNT(*) AS n FROM unnest(c_queue, c_seq) AS c(queue, seq)
        WHERE c.seq = ANY(l_seq) GROUP BY c.queue ORDER BY c.queue
    LOOP
        -- Counted where the limit stands now: a limit set after this claim read the queue
        -- (unlocked, as it was unlimited) counts these runs too.
        UPDATE queues SET active = active + r.n WHERE name = r.queue AND concurrency IS NOT NULL;
        IF FOUND AND r.queue <> ALL(q_capped) THEN
            UPDATE runs SET holds_queue_slot = true WHERE seq = ANY(l_seq) AND queue = r.queue;
        END IF;
        IF q_period[array_position(q_name, r.queue)] IS NOT NULL THEN
            INSERT INTO queue_starts (queue, at) SELECT r.queue, p_now FROM generate_series(1, r.n);
        END IF;
    END LOOP;
    FOR i IN 1 .. cardinality(q_name) LOOP
        IF q_period[i] IS NOT NULL THEN
            DELETE FROM queue_starts
            WHERE queue = q_name[i] AND at <= p_now - q_period[i] - p_start_margin;
        END IF;
    END LOOP;
    FOR r IN
        SELECT j, t_name[j] AS name FROM generate_subscripts(t_name, 1) AS j
        WHERE t_taken[j] > 0 ORDER BY t_name[j]
    LOOP
        SELECT COUNT(*) INTO n FROM unnest(c_tenant, c_seq) AS c(tenant, seq)
        WHERE c.tenant = r.name AND c.seq = ANY(l_seq);
        -- Relative moves: a claim that waited for a queue lock may have read an older pass.
        UPDATE tenants SET pass = pass + t_taken[r.j] / t_weight[r.j], ready = ready - n,
            active = active + CASE WHEN concurrency IS NULL THEN 0 ELSE n END
        WHERE name = r.name RETURNING concurrency INTO limit_now;
        IF limit_now IS NOT NULL AND NOT t_limited[r.j] THEN  -- a limit set meanwhile
            UPDATE runs SET holds_tenant_slot = true
            WHERE seq = ANY(l_seq) AND tenant = r.name;
        END IF;
    END LOOP;
    -- The held runs are no longer ready.
    FOR r IN
        SELECT c.tenant, COUNT(*) AS n FROM unnest(c_tenant, c_seq) AS c(tenant, seq)
        WHERE c.seq = ANY(h_seq) GROUP BY c.tenant ORDER BY c.tenant
    LOOP
        UPDATE tenants SET ready = ready - r.n WHERE name = r.tenant;
    END LOOP;

    INSERT INTO run_events (run_id, at, state, reason, worker_id)
    SELECT id, p_now, 'running', 'leased', p_worker FROM runs WHERE seq = ANY(l_seq);
    RETURN QUERY SELECT * FROM runs WHERE seq = ANY(l_seq) ORDER BY priority DESC, seq;
END
$$;
