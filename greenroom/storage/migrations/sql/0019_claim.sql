-- The claim on PostgreSQL, as 0006_claim.sql made it but for step 2: only tenants with a run
-- this claim could start are in the turn (claim.py's _ready_tenants). A change to claim.py's
-- decisions needs the same change here, in a new migration.

CREATE OR REPLACE FUNCTION greenroom_claim(
    p_worker text,
    p_queues text[],  -- sorted, no duplicates
    p_limit integer,
    p_lease double precision,
    p_now double precision,
    p_tenant_scan integer,
    p_start_margin double precision
) RETURNS SETOF runs LANGUAGE plpgsql AS $$
-- What claim.py keeps in objects is kept here in arrays, by position. Rows are locked in
-- code-point order (COLLATE "C"), as Python's sorted() orders them everywhere else.
DECLARE
    -- The served queues (claim.py's _Plan), by position.
    q_name text[] := p_queues;
    q_allow double precision[] := array_fill(p_limit::double precision, ARRAY[cardinality(p_queues)]);
    q_lease double precision[] := array_fill(NULL::double precision, ARRAY[cardinality(p_queues)]);
    q_period double precision[] := array_fill(NULL::double precision, ARRAY[cardinality(p_queues)]);
    q_count integer[] := array_fill(0, ARRAY[cardinality(p_queues)]);
    q_locked text[] := '{}';     -- limited when read: locked, then read again
    q_capped text[] := '{}';     -- with a concurrency limit: their runs hold a slot
    -- Ready tenants first in turn (claim.py's _Tenant), by position.
    t_name text[] := '{}';
    t_weight double precision[] := '{}';
    t_pass double precision[] := '{}';
    t_concurrency integer[] := '{}';
    t_room double precision[] := '{}';
    t_taken integer[] := '{}';
    t_count integer[] := '{}';   -- leased (t_taken counts what was chosen)
    t_held integer[] := '{}';
    t_served boolean[] := '{}';  -- out of the turn
    t_next integer[] := '{}';    -- its next candidate in cands; NULL: not read yet
    t_last integer[] := '{}';
    t_capped text[] := '{}';
    cands greenroom_candidate[] := '{}';
    -- What was chosen, in order: the run, its tenant (position) and its lease.
    c_seq bigint[] := '{}';
    c_queue text[] := '{}';
    c_session text[] := '{}';
    c_tenant integer[] := '{}';
    c_seconds double precision[] := '{}';
    any_session boolean := false;
    any_pause boolean;
    l_seq bigint[];              -- leased, and not held by a pause
    h_seq bigint[] := '{}';
    r record;
    i integer;
    best integer;
    open_queues text[];
    qn text;
    cand greenroom_candidate;
    allow double precision;
    started bigint;
    limit_now integer;
BEGIN
    -- 1. Queues: what their limits still allow (limited ones locked, then read again).
    FOR r IN SELECT * FROM queues WHERE name = ANY(p_queues) ORDER BY name COLLATE "C" LOOP
        q_lease[array_position(q_name, r.name::text)] := r.lease_seconds;
        IF r.concurrency IS NOT NULL OR r.rate_limit IS NOT NULL THEN
            q_locked := array_append(q_locked, r.name::text);
        END IF;
    END LOOP;
    IF cardinality(q_locked) > 0 THEN
        FOR r IN
            SELECT * FROM queues WHERE name = ANY(q_locked) ORDER BY name COLLATE "C" FOR UPDATE
        LOOP
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
    END IF;
    IF NOT 0 < ANY(q_allow) THEN
        RETURN;
    END IF;

    -- 2. Tenants with a run this claim could start, lowest pass first (claim.py's
    -- _ready_tenants: tenants whose ready runs all wait must not fill the scan); those with a
    -- concurrency limit locked.
    open_queues := ARRAY(SELECT q_name[j] FROM generate_subscripts(q_name, 1) AS j WHERE q_allow[j] > 0);
    FOR r IN
        SELECT t.name, t.weight, t.pass, t.concurrency FROM tenants t
        WHERE t.ready > 0 AND (t.concurrency IS NULL OR t.active < t.concurrency) AND (
            EXISTS (
                SELECT 1 FROM runs x WHERE x.tenant = t.name AND x.state = 'queued'
                AND x.session_key IS NULL AND x.queue = ANY(open_queues)
            ) OR EXISTS (
                SELECT 1 FROM lanes l WHERE l.tenant = t.name AND l.head_seq IS NOT NULL
                AND l.active < l.max_active AND l.head_queue = ANY(open_queues)
            )
        )
        ORDER BY t.pass, t.name LIMIT p_tenant_scan
    LOOP
        t_name := array_append(t_name, r.name::text);
        t_weight := array_append(t_weight, greatest(r.weight, 1e-6));
        t_pass := array_append(t_pass, r.pass);
        t_concurrency := array_append(t_concurrency, r.concurrency);
        t_room := array_append(t_room, 'Infinity'::double precision);
        t_taken := array_append(t_taken, 0);
        t_count := array_append(t_count, 0);
        t_held := array_append(t_held, 0);
        t_served := array_append(t_served, false);
        t_next := array_append(t_next, NULL::integer);
        t_last := array_append(t_last, 0);
        IF r.concurrency IS NOT NULL THEN
            t_capped := array_append(t_capped, r.name::text);
        END IF;
    END LOOP;
    IF cardinality(t_capped) > 0 THEN
        FOR r IN
            SELECT t.name, t.active FROM tenants t WHERE t.name = ANY(t_capped)
            ORDER BY t.name COLLATE "C" FOR UPDATE
        LOOP
            i := array_position(t_name, r.name::text);
            t_room[i] := t_concurrency[i] - r.active;
        END LOOP;
    END IF;

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
        open_queues := '{}';
        FOR j IN 1 .. cardinality(q_name) LOOP
            IF q_allow[j] > 0 THEN
                open_queues := array_append(open_queues, q_name[j]);
            END IF;
        END LOOP;
        EXIT WHEN cardinality(open_queues) = 0;
        IF t_next[best] IS NULL THEN
            -- Its best ready runs, best first: free runs and heads of free lanes, one query per
            -- queue (a list of queues would read and sort every ready row).
            t_next[best] := cardinality(cands) + 1;
            FOREACH qn IN ARRAY open_queues LOOP
                cands := cands || ARRAY(
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
                    ORDER BY priority DESC, seq
                );
            END LOOP;
            t_last[best] := cardinality(cands);
            IF cardinality(open_queues) > 1 THEN
                cands := cands[1 : t_next[best] - 1] || ARRAY(
                    SELECT c FROM unnest(cands[t_next[best] :]) AS c ORDER BY c.priority DESC, c.seq
                );
            END IF;
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
        c_tenant := array_append(c_tenant, best);
        c_seconds := array_append(c_seconds, COALESCE(NULLIF(q_lease[i], 0), p_lease));
        any_session := any_session OR cand.session_key IS NOT NULL;
        q_allow[i] := q_allow[i] - 1;
        t_taken[best] := t_taken[best] + 1;
        t_pass[best] := t_pass[best] + 1.0 / t_weight[best];
    END LOOP;
    IF cardinality(c_seq) = 0 THEN
        RETURN;
    END IF;

    -- 4. The lease; whether any pause exists, in the same statement (there rarely is one).
    WITH leased AS (
        UPDATE runs SET state = 'running', lease_owner = p_worker,
            lease_token = lease_token + 1, lease_expires_at = p_now + c.seconds,
            lease_seconds = c.seconds, started_at = COALESCE(started_at, p_now),
            updated_at = p_now, holds_queue_slot = runs.queue = ANY(q_capped),
            holds_tenant_slot = runs.tenant = ANY(t_capped)
        FROM unnest(c_seq, c_seconds) AS c(seq, seconds)
        WHERE runs.seq = c.seq AND runs.state = 'queued'
        RETURNING runs.seq
    )
    SELECT COALESCE(array_agg(seq), '{}'), EXISTS (SELECT 1 FROM pauses)
    INTO l_seq, any_pause FROM leased;

    -- 5. A run enqueued while its pause was being created can still be ready: never start it.
    IF any_pause THEN
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
    FOR k IN 1 .. cardinality(c_seq) LOOP
        IF c_seq[k] = ANY(l_seq) THEN
            i := array_position(q_name, c_queue[k]);
            q_count[i] := q_count[i] + 1;
            t_count[c_tenant[k]] := t_count[c_tenant[k]] + 1;
        ELSIF c_seq[k] = ANY(h_seq) THEN
            t_held[c_tenant[k]] := t_held[c_tenant[k]] + 1;
        END IF;
    END LOOP;

    -- 6. Lanes, queues and tenants move on by what was leased (lock order: lanes, queues,
    -- tenants). A chosen head that was not leased is refreshed.
    IF any_session THEN
        FOR r IN
            SELECT t_name[c.tenant] AS tenant, c.session_key, c.seq = ANY(l_seq) AS leased
            FROM unnest(c_tenant, c_session, c_seq) AS c(tenant, session_key, seq)
            WHERE c.session_key IS NOT NULL
            ORDER BY t_name[c.tenant] COLLATE "C", c.session_key COLLATE "C"
        LOOP
            UPDATE lanes SET active = active + CASE WHEN r.leased THEN 1 ELSE 0 END,
                (head_seq, head_priority, head_queue) = (
                    SELECT x.seq, x.priority, x.queue FROM runs x WHERE x.tenant = lanes.tenant
                    AND x.session_key = lanes.session_key AND x.state = 'queued'
                    ORDER BY x.priority DESC, x.seq LIMIT 1
                )
            WHERE tenant = r.tenant AND session_key = r.session_key;
        END LOOP;
    END IF;
    FOR i IN 1 .. cardinality(q_name) LOOP
        IF q_count[i] > 0 THEN
            -- Counted where the limit stands now: a limit set after this claim read the queue
            -- (unlocked, as it was unlimited) counts these runs too.
            UPDATE queues SET active = active + q_count[i]
            WHERE name = q_name[i] AND concurrency IS NOT NULL;
            IF FOUND AND q_name[i] <> ALL(q_capped) THEN
                UPDATE runs SET holds_queue_slot = true
                WHERE seq = ANY(l_seq) AND queue = q_name[i];
            END IF;
            IF q_period[i] IS NOT NULL THEN
                INSERT INTO queue_starts (queue, at)
                SELECT q_name[i], p_now FROM generate_series(1, q_count[i]);
            END IF;
        END IF;
    END LOOP;
    FOR i IN 1 .. cardinality(q_name) LOOP
        IF q_period[i] IS NOT NULL THEN
            DELETE FROM queue_starts
            WHERE queue = q_name[i] AND at <= p_now - q_period[i] - p_start_margin;
        END IF;
    END LOOP;
    FOR i IN SELECT j FROM generate_subscripts(t_name, 1) AS j ORDER BY t_name[j] COLLATE "C" LOOP
        CONTINUE WHEN t_taken[i] = 0;
        -- Relative moves: a claim that waited for a lock may have read an older pass.
        UPDATE tenants SET pass = pass + t_taken[i] / t_weight[i], ready = ready - t_count[i],
            active = active + CASE WHEN concurrency IS NULL THEN 0 ELSE t_count[i] END
        WHERE name = t_name[i] RETURNING concurrency INTO limit_now;
        IF limit_now IS NOT NULL AND t_concurrency[i] IS NULL THEN  -- a limit set meanwhile
            UPDATE runs SET holds_tenant_slot = true WHERE seq = ANY(l_seq) AND tenant = t_name[i];
        END IF;
    END LOOP;
    IF cardinality(h_seq) > 0 THEN  -- the held runs are no longer ready
        FOR i IN SELECT j FROM generate_subscripts(t_name, 1) AS j ORDER BY t_name[j] COLLATE "C" LOOP
            IF t_held[i] > 0 THEN
                UPDATE tenants SET ready = ready - t_held[i] WHERE name = t_name[i];
            END IF;
        END LOOP;
    END IF;

    INSERT INTO run_events (run_id, at, state, reason, worker_id)
    SELECT id, p_now, 'running', 'leased', p_worker FROM runs WHERE seq = ANY(l_seq);
    RETURN QUERY SELECT * FROM runs WHERE seq = ANY(l_seq) ORDER BY priority DESC, seq;
END
$$;
