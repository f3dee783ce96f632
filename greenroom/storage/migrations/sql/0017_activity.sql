-- Activity days marked in SQL (storage.licenses, PostgreSQL): the same bits as
-- greenroom.licenses.activity.Activity, stored as the hex of 23 little-endian bytes (bit i = i
-- days before activity_day), so a save merges a page into the stored rows in one statement.

-- Each byte's two hex digits swapped.
CREATE FUNCTION greenroom_activity_swap(bits bit(184)) RETURNS bit(184)
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT ((bits & ('x' || repeat('f0', 23))::bit(184)) >> 4)
           | ((bits & ('x' || repeat('0f', 23))::bit(184)) << 4)
$$;

-- The stored activity as bit(184), bit i of the integer at position 183 - i; none (zeros) when
-- it cannot be read (not hex, or bits without their day), as Python reads it. Reversing the hex
-- puts the bytes in order but swaps each byte's two digits, which the masks swap back.
CREATE FUNCTION greenroom_activity_bits(activity text, activity_day integer) RETURNS bit(184)
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN activity_day IS NULL OR activity IS NULL OR activity !~ '^([0-9a-fA-F]{2})*$'
            THEN repeat('0', 184)::bit(184)
        ELSE greenroom_activity_swap(('x' || reverse(rpad(left(activity, 46), 46, '0')))::bit(184))
             & (repeat('0', 4) || repeat('1', 180))::bit(184)
    END
$$;

-- The hex greenroom stores for bits (the inverse of greenroom_activity_bits): varbit_send's
-- bytes after its 4-byte length, in order, each byte's digits swapped back by reverse().
CREATE FUNCTION greenroom_activity_hex(bits bit(184)) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT reverse(encode(substring(varbit_send(greenroom_activity_swap(bits)) FROM 5), 'hex'))
$$;

-- Activity.mark: `day` marked in bits ending on `last_day` (nothing when day is NULL). A newer
-- day shifts the window up; a day older than the window is ignored.
CREATE FUNCTION greenroom_activity_mark(bits bit(184), last_day integer, day integer)
RETURNS bit(184) LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN day IS NULL THEN bits
        WHEN bits = repeat('0', 184)::bit(184) THEN (repeat('0', 183) || '1')::bit(184)
        WHEN day > last_day THEN ((bits << LEAST(day - last_day, 184))
                                  | (repeat('0', 183) || '1')::bit(184))
                                 & (repeat('0', 4) || repeat('1', 180))::bit(184)
        WHEN last_day - day >= 180 THEN bits
        ELSE bits | ((repeat('0', 183) || '1')::bit(184) << (last_day - day))
    END
$$;

-- The day the bits end on after greenroom_activity_mark(bits, last_day, day).
CREATE FUNCTION greenroom_activity_last(bits bit(184), last_day integer, day integer)
RETURNS integer LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN day IS NULL THEN last_day
        WHEN bits = repeat('0', 184)::bit(184) OR day > last_day THEN day
        ELSE last_day
    END
$$;
