//! The interactive shell: REPL (rustyline), SQL -> KV plans (sqlparser), catalog, row codec, and output formats.
