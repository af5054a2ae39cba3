"""Where rows go: ClickHouse or embedded chDB (client, engine), the schema and its migrations,
the batching writer and its disk spool."""
