-- Who a request is for: the proxy's tenant header (x-tenant-id by default) or, when asked,
-- the hashed credential; '' when neither; capped per proxy process (tenant_cap) with the
-- rest as 'other'. Existing stores upgrade in place: old rows read ''. Placeholders as in 001.

ALTER TABLE fathom.requests{local} {on_cluster}
    ADD COLUMN IF NOT EXISTS tenant LowCardinality(String) DEFAULT '';
