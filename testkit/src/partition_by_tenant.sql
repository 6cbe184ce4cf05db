-- Rebuilds the tables $1 of a migrated database (but those already partitioned) as
-- tables hash-partitioned by tenant_id into $2 partitions each, keeping their rows,
-- columns, defaults, checks, keys, indexes, triggers, the foreign keys between them and
-- the views over them.
-- PostgreSQL then enforces on every unique key the rule Citus enforces on a distributed
-- table: it must include tenant_id.
CREATE FUNCTION pg_temp.costdb_partition_by_tenant(tables text[], modulus int)
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    t text;
    d text;
    fks text[];
    keys text[];
    indexes text[];
    triggers text[];
    owned text[];
    views text[];
BEGIN
    -- The views over these tables, dropped first and made again last.
    SELECT coalesce(array_agg(DISTINCT format('CREATE VIEW %s AS %s', v.oid::regclass,
                                              pg_get_viewdef(v.oid))), '{}')
    INTO views
    FROM pg_depend dep
    JOIN pg_rewrite rw ON rw.oid = dep.objid
    JOIN pg_class v ON v.oid = rw.ev_class AND v.relkind = 'v'
    WHERE dep.refobjid::regclass::text = ANY (tables);
    FOR d IN
        SELECT DISTINCT format('DROP VIEW %s', v.oid::regclass)
        FROM pg_depend dep
        JOIN pg_rewrite rw ON rw.oid = dep.objid
        JOIN pg_class v ON v.oid = rw.ev_class AND v.relkind = 'v'
        WHERE dep.refobjid::regclass::text = ANY (tables)
    LOOP
        EXECUTE d;
    END LOOP;

    -- The foreign keys from or to these tables, dropped first and made again last.
    SELECT coalesce(array_agg(format('ALTER TABLE %s ADD CONSTRAINT %I %s',
                                     c.conrelid::regclass, c.conname,
                                     pg_get_constraintdef(c.oid))), '{}')
    INTO fks
    FROM pg_constraint c
    WHERE c.contype = 'f'
      AND (c.conrelid::regclass::text = ANY (tables) OR c.confrelid::regclass::text = ANY (tables));
    FOR d IN
        SELECT format('ALTER TABLE %s DROP CONSTRAINT %I', c.conrelid::regclass, c.conname)
        FROM pg_constraint c
        WHERE c.contype = 'f'
          AND (c.conrelid::regclass::text = ANY (tables)
               OR c.confrelid::regclass::text = ANY (tables))
    LOOP
        EXECUTE d;
    END LOOP;

    FOREACH t IN ARRAY tables LOOP
        -- A table the migrations already partition (cost_records, by day) keeps its
        -- partitions: its unique keys include tenant_id already.
        CONTINUE WHEN (SELECT relkind FROM pg_class WHERE oid = t::regclass) = 'p';
        SELECT coalesce(array_agg(format('ALTER TABLE %I ADD CONSTRAINT %I %s', t, c.conname,
                                         pg_get_constraintdef(c.oid))
                                  ORDER BY c.conname), '{}')
        INTO keys
        FROM pg_constraint c
        WHERE c.conrelid = t::regclass AND c.contype IN ('p', 'u', 'x');
        SELECT coalesce(array_agg(pg_get_indexdef(i.indexrelid) ORDER BY i.indexrelid), '{}')
        INTO indexes
        FROM pg_index i
        WHERE i.indrelid = t::regclass
          AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid);
        SELECT coalesce(array_agg(pg_get_triggerdef(g.oid) ORDER BY g.tgname), '{}')
        INTO triggers
        FROM pg_trigger g
        WHERE g.tgrelid = t::regclass AND NOT g.tgisinternal;
        -- Sequences the table owns (serial columns) move to the new table.
        SELECT coalesce(array_agg(format('ALTER SEQUENCE %s OWNED BY %I.%I',
                                         s.objid::regclass, t, a.attname)), '{}')
        INTO owned
        FROM pg_depend s
        JOIN pg_attribute a ON a.attrelid = s.refobjid AND a.attnum = s.refobjsubid
        JOIN pg_class q ON q.oid = s.objid AND q.relkind = 'S'
        WHERE s.refobjid = t::regclass AND s.classid = 'pg_class'::regclass
          AND s.deptype = 'a' AND s.refobjsubid > 0;
        FOR d IN
            SELECT format('ALTER SEQUENCE %s OWNED BY NONE', s.objid::regclass)
            FROM pg_depend s
            JOIN pg_class q ON q.oid = s.objid AND q.relkind = 'S'
            WHERE s.refobjid = t::regclass AND s.classid = 'pg_class'::regclass
              AND s.deptype = 'a' AND s.refobjsubid > 0
        LOOP
            EXECUTE d;
        END LOOP;

        EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS '
                       'INCLUDING GENERATED INCLUDING IDENTITY INCLUDING STORAGE '
                       'INCLUDING COMMENTS) PARTITION BY HASH (tenant_id)',
                       t || '_by_tenant', t);
        FOR p IN 0 .. modulus - 1 LOOP
            EXECUTE format('CREATE TABLE %I PARTITION OF %I '
                           'FOR VALUES WITH (MODULUS %s, REMAINDER %s)',
                           t || '_p' || p, t || '_by_tenant', modulus, p);
        END LOOP;
        EXECUTE format('INSERT INTO %I SELECT * FROM %I', t || '_by_tenant', t);
        EXECUTE format('DROP TABLE %I', t);
        EXECUTE format('ALTER TABLE %I RENAME TO %I', t || '_by_tenant', t);
        FOREACH d IN ARRAY keys || indexes || triggers || owned LOOP
            EXECUTE d;
        END LOOP;
        -- A partition's index is named after its table's, as Citus names a shard's
        -- (`uq_cost_records_tenant_request_p3`): errors name the key either way.
        FOR d IN
            SELECT format('ALTER INDEX %I RENAME TO %I', ci.relname,
                          pi.relname || substring(pc.relname FROM '_p[0-9]+$'))
            FROM pg_inherits ih
            JOIN pg_class ci ON ci.oid = ih.inhrelid
            JOIN pg_class pi ON pi.oid = ih.inhparent AND pi.relkind = 'I'
            JOIN pg_index x ON x.indexrelid = ci.oid
            JOIN pg_class pc ON pc.oid = x.indrelid
            JOIN pg_inherits tp ON tp.inhrelid = pc.oid AND tp.inhparent = t::regclass
        LOOP
            EXECUTE d;
        END LOOP;
    END LOOP;

    FOREACH d IN ARRAY fks || views LOOP
        EXECUTE d;
    END LOOP;
END
$$;
