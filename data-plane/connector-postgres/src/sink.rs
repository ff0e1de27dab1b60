use std::collections::HashMap;
use std::str::FromStr;

use arrow_array::cast::AsArray;
use arrow_array::types::Int8Type;
use arrow_array::{Array, RecordBatch};
use arrow_cast::display::{ArrayFormatter, FormatOptions};
use arrow_schema::DataType;
use sluice_runtime::connector::{SinkContext, SinkWriter};
use sluice_runtime::{Result, RowKind, RuntimeError};
use sluice_sql::TableDef;
use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, Connection, PgConnection};

/// Per-subtask commit markers of exactly-once sinks, in the sink's database.
pub const MARKER_TABLE: &str = "sluice_sink_commits";

const DEFAULT_MAX_ROWS: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Upsert,
    Delete,
}

type Row = Vec<Option<String>>;

fn err(table: &str, message: String) -> RuntimeError {
    RuntimeError::Connector {
        connector: "jdbc".into(),
        table: table.into(),
        message,
    }
}

/// The `url` option as a URL sqlx takes: Flink's `jdbc:postgresql://…` or `postgres://…`.
pub fn pg_connect_url(url: &str) -> std::result::Result<String, String> {
    let u = url.strip_prefix("jdbc:").unwrap_or(url);
    if u.starts_with("postgresql://") || u.starts_with("postgres://") {
        Ok(u.to_string())
    } else {
        Err(format!(
            "url '{url}' is not a PostgreSQL URL (jdbc:postgresql://host:port/db or postgres://…)"
        ))
    }
}

/// An identifier as PostgreSQL reads Flink's unquoted SQL: lowercased unless
/// double-quoted; returned quoted, so nothing in it can be SQL.
fn ident(s: &str) -> String {
    let s = s.trim();
    let inner = match s.strip_prefix('"').and_then(|x| x.strip_suffix('"')) {
        Some(q) => q.replace("\"\"", "\""),
        None => s.to_lowercase(),
    };
    format!("\"{}\"", inner.replace('"', "\"\""))
}

/// `schema.table` → quoted parts (a dot inside double quotes is part of a name).
fn table_ident(s: &str) -> String {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in s.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            '.' if !quoted => parts.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    parts.push(cur);
    parts.iter().map(|p| ident(p)).collect::<Vec<_>>().join(".")
}

/// The SQL type a column's text is cast to.
fn pg_type(t: &DataType) -> &'static str {
    match t {
        DataType::Int8 | DataType::Int16 => "int2",
        DataType::Int32 => "int4",
        DataType::Int64 => "int8",
        DataType::Float32 => "float4",
        DataType::Float64 => "float8",
        DataType::Boolean => "bool",
        DataType::Timestamp(_, None) => "timestamp",
        DataType::Timestamp(_, Some(_)) => "timestamptz",
        DataType::Date32 | DataType::Date64 => "date",
        DataType::Decimal128(_, _) | DataType::Decimal256(_, _) => "numeric",
        _ => "text",
    }
}

struct Sql {
    /// Upsert mode: `INSERT … ON CONFLICT DO UPDATE`; append mode: plain insert.
    insert: String,
    delete: Option<String>,
}

fn build_sql(table: &TableDef, target: &str) -> Sql {
    let cols: Vec<String> = table.physical.iter().map(|c| ident(&c.name)).collect();
    let n = cols.len();
    let params: Vec<String> = (1..=n).map(|i| format!("${i}::text[]")).collect();
    let vs: Vec<String> = (0..n).map(|i| format!("v{i}")).collect();
    let casts: Vec<String> = table
        .physical
        .iter()
        .enumerate()
        .map(|(i, c)| format!("v{i}::{}", pg_type(&c.ty)))
        .collect();
    let mut insert = format!(
        "INSERT INTO {target} ({}) SELECT {} FROM UNNEST({}) AS u({})",
        cols.join(", "),
        casts.join(", "),
        params.join(", "),
        vs.join(", ")
    );
    let pk = &table.primary_key;
    if pk.is_empty() {
        return Sql {
            insert,
            delete: None,
        };
    }
    let others: Vec<String> = (0..n)
        .filter(|i| !pk.contains(i))
        .map(|i| format!("{c} = EXCLUDED.{c}", c = cols[i]))
        .collect();
    let keys: Vec<String> = pk.iter().map(|&i| cols[i].clone()).collect();
    if others.is_empty() {
        insert.push_str(&format!(" ON CONFLICT ({}) DO NOTHING", keys.join(", ")));
    } else {
        insert.push_str(&format!(
            " ON CONFLICT ({}) DO UPDATE SET {}",
            keys.join(", "),
            others.join(", ")
        ));
    }
    let kparams: Vec<String> = (1..=pk.len()).map(|i| format!("${i}::text[]")).collect();
    let kvs: Vec<String> = (0..pk.len()).map(|i| format!("k{i}")).collect();
    let conds: Vec<String> = pk
        .iter()
        .enumerate()
        .map(|(j, &i)| format!("t.{} = d.k{j}::{}", cols[i], pg_type(&table.physical[i].ty)))
        .collect();
    let delete = format!(
        "DELETE FROM {target} AS t USING UNNEST({}) AS d({}) WHERE {}",
        kparams.join(", "),
        kvs.join(", "),
        conds.join(" AND ")
    );
    Sql {
        insert,
        delete: Some(delete),
    }
}

pub struct JdbcSink {
    table: TableDef,
    options: PgConnectOptions,
    rt: tokio::runtime::Runtime,
    conn: Option<PgConnection>,
    sql: Sql,
    /// Indexes into the row of the primary key (upsert mode).
    pk: Vec<usize>,
    updating: bool,
    max_rows: usize,
    exactly_once: bool,
    job_id: String,
    sink_uid: String,
    subtask: usize,
    rows: Vec<(Op, Row)>,
    marker_ready: bool,
}

impl JdbcSink {
    pub fn new(ctx: &SinkContext) -> Result<Self> {
        let t = &ctx.table;
        let bad = |m: String| err(&t.name, m);
        let url = t
            .option("url")
            .ok_or_else(|| bad("missing option 'url'".into()))?;
        let target = t
            .option("table-name")
            .ok_or_else(|| bad("missing option 'table-name'".into()))?;
        let mut options = PgConnectOptions::from_str(&pg_connect_url(url).map_err(bad)?)
            .map_err(|e| bad(format!("url '{url}': {e}")))?;
        if let Some(u) = t.option("username") {
            options = options.username(u);
        }
        if let Some(p) = t.option("password") {
            options = options.password(p);
        }
        let max_rows = match t.option("sink.buffer-flush.max-rows") {
            Some(v) => v.trim().parse::<usize>().map_err(|_| {
                bad(format!(
                    "option 'sink.buffer-flush.max-rows': '{v}' is not a count"
                ))
            })?,
            None => DEFAULT_MAX_ROWS,
        }
        .max(1);
        if ctx.updating && t.primary_key.is_empty() {
            return Err(bad(
                "the query produces updates: the jdbc sink table needs PRIMARY KEY (…) NOT ENFORCED"
                    .into(),
            ));
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| bad(format!("starting the sink's runtime: {e}")))?;
        Ok(JdbcSink {
            table: t.clone(),
            options,
            rt,
            conn: None,
            sql: build_sql(t, &table_ident(target)),
            pk: t.primary_key.clone(),
            updating: ctx.updating,
            max_rows,
            exactly_once: ctx.exactly_once,
            job_id: ctx.job_id.clone(),
            sink_uid: ctx.sink_uid.clone(),
            subtask: ctx.subtask,
            rows: Vec::new(),
            marker_ready: false,
        })
    }

    fn err(&self, m: String) -> RuntimeError {
        err(&self.table.name, m)
    }

    /// Only the last change of each key (upsert mode); append mode keeps all rows.
    fn compact(&self, rows: Vec<(Op, Row)>) -> Vec<(Op, Row)> {
        if self.pk.is_empty() {
            return rows;
        }
        let mut at: HashMap<Row, usize> = HashMap::new();
        let mut out: Vec<(Op, Row)> = Vec::new();
        for (op, row) in rows {
            let key: Row = self.pk.iter().map(|&i| row[i].clone()).collect();
            match at.get(&key) {
                Some(&i) => out[i] = (op, row),
                None => {
                    at.insert(key, out.len());
                    out.push((op, row));
                }
            }
        }
        out
    }

    /// Runs `f` on the connection (connecting first); a failed call drops the
    /// connection so the next one starts clean.
    fn with_conn<T>(
        &mut self,
        what: &str,
        f: impl AsyncFnOnce(&mut PgConnection) -> std::result::Result<T, sqlx::Error>,
    ) -> Result<T> {
        let opts = self.options.clone();
        let mut conn = self.conn.take();
        let res = self.rt.block_on(async {
            if conn.is_none() {
                conn = Some(PgConnection::connect_with(&opts).await?);
            }
            match conn.as_mut() {
                Some(c) => f(c).await,
                None => Err(sqlx::Error::PoolClosed),
            }
        });
        match res {
            Ok(v) => {
                self.conn = conn;
                Ok(v)
            }
            Err(e) => Err(self.err(format!("{what}: {e}"))),
        }
    }

    /// Writes the buffered rows in one transaction (at-least-once).
    fn write_out(&mut self) -> Result<()> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.rows);
        let rows = self.compact(rows);
        let (insert, delete, pk) = (
            self.sql.insert.clone(),
            self.sql.delete.clone(),
            self.pk.clone(),
        );
        let n = rows.len();
        self.with_conn(&format!("writing {n} rows"), async move |c| {
            let mut tx = c.begin().await?;
            apply(&mut tx, &insert, delete.as_deref(), &pk, &rows).await?;
            tx.commit().await
        })
    }

    fn ensure_marker_table(&mut self) -> Result<()> {
        if self.marker_ready {
            return Ok(());
        }
        self.with_conn("creating the commit marker table", async |c| {
            let create = format!(
                "CREATE TABLE IF NOT EXISTS {MARKER_TABLE} (
                    job_id text NOT NULL,
                    sink_uid text NOT NULL,
                    subtask integer NOT NULL,
                    -- the commit sequence (generation << 32 | checkpoint id) of the
                    -- last commit: named so when it was only the checkpoint id
                    checkpoint_id bigint NOT NULL,
                    committed_at timestamptz NOT NULL DEFAULT now(),
                    PRIMARY KEY (job_id, sink_uid, subtask))"
            );
            match sqlx::query(AssertSqlSafe(create)).execute(&mut *c).await {
                Ok(_) => Ok(()),
                // Parallel subtasks racing on CREATE TABLE IF NOT EXISTS: one
                // wins, the others see a duplicate type or table.
                Err(sqlx::Error::Database(d))
                    if matches!(d.code().as_deref(), Some("23505") | Some("42P07")) =>
                {
                    Ok(())
                }
                Err(e) => Err(e),
            }
        })?;
        self.marker_ready = true;
        Ok(())
    }
}

/// Applies compacted rows: deletes, then inserts/upserts (each key appears once).
async fn apply(
    c: &mut PgConnection,
    insert: &str,
    delete: Option<&str>,
    pk: &[usize],
    rows: &[(Op, Row)],
) -> std::result::Result<(), sqlx::Error> {
    let width = rows.first().map(|(_, r)| r.len()).unwrap_or(0);
    if let Some(delete) = delete {
        let dels: Vec<&Row> = rows
            .iter()
            .filter(|(op, _)| *op == Op::Delete)
            .map(|(_, r)| r)
            .collect();
        if !dels.is_empty() {
            let mut q = sqlx::query(AssertSqlSafe(delete.to_string()));
            for &i in pk {
                q = q.bind(dels.iter().map(|r| r[i].clone()).collect::<Vec<_>>());
            }
            q.execute(&mut *c).await?;
        }
    }
    let ups: Vec<&Row> = rows
        .iter()
        .filter(|(op, _)| *op == Op::Upsert)
        .map(|(_, r)| r)
        .collect();
    if !ups.is_empty() {
        let mut q = sqlx::query(AssertSqlSafe(insert.to_string()));
        for i in 0..width {
            q = q.bind(ups.iter().map(|r| r[i].clone()).collect::<Vec<_>>());
        }
        q.execute(&mut *c).await?;
    }
    Ok(())
}

fn encode_committable(subtask: usize, rows: &[(Op, Row)]) -> Vec<u8> {
    let rows: Vec<serde_json::Value> = rows
        .iter()
        .map(|(op, r)| {
            serde_json::json!([
                match op {
                    Op::Upsert => "+I",
                    Op::Delete => "-D",
                },
                r
            ])
        })
        .collect();
    serde_json::json!({"jdbc": {"subtask": subtask, "rows": rows}})
        .to_string()
        .into_bytes()
}

fn decode_committable(c: &[u8]) -> std::result::Result<(usize, Vec<(Op, Row)>), String> {
    let v: serde_json::Value =
        serde_json::from_slice(c).map_err(|e| format!("committable is not JSON: {e}"))?;
    let subtask = v
        .pointer("/jdbc/subtask")
        .and_then(|s| s.as_u64())
        .ok_or("committable has no jdbc.subtask")? as usize;
    let rows = v
        .pointer("/jdbc/rows")
        .and_then(|s| s.as_array())
        .ok_or("committable has no jdbc.rows")?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let op = match r.get(0).and_then(|o| o.as_str()) {
            Some("+I") => Op::Upsert,
            Some("-D") => Op::Delete,
            _ => return Err(format!("bad row {r} in committable")),
        };
        let vals = r
            .get(1)
            .and_then(|x| x.as_array())
            .ok_or_else(|| format!("bad row {r} in committable"))?;
        let mut row = Vec::with_capacity(vals.len());
        for x in vals {
            row.push(match x {
                serde_json::Value::Null => None,
                serde_json::Value::String(s) => Some(s.clone()),
                other => return Err(format!("bad value {other} in committable")),
            });
        }
        out.push((op, row));
    }
    Ok((subtask, out))
}

impl SinkWriter for JdbcSink {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let ncols = self.table.physical.len();
        let opts = FormatOptions::default();
        let fmts = (0..ncols)
            .map(|c| ArrayFormatter::try_new(batch.column(c).as_ref(), &opts))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| self.err(format!("formatting values: {e}")))?;
        let kinds = self.updating.then(|| {
            batch
                .column(batch.num_columns() - 1)
                .as_primitive::<Int8Type>()
                .clone()
        });
        for r in 0..batch.num_rows() {
            let op = match kinds.as_ref().map(|k| RowKind::from_i8(k.value(r))) {
                Some(RowKind::UpdateBefore) => continue,
                Some(RowKind::Delete) => Op::Delete,
                _ => Op::Upsert,
            };
            let row: Row = (0..ncols)
                .map(|c| (!batch.column(c).is_null(r)).then(|| fmts[c].value(r).to_string()))
                .collect();
            self.rows.push((op, row));
        }
        if !self.exactly_once && self.rows.len() >= self.max_rows {
            self.write_out()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        // Exactly-once rows wait for their checkpoint's commit.
        if self.exactly_once {
            return Ok(());
        }
        self.write_out()
    }

    /// End of input writes what is left directly (for exactly-once the task
    /// layer takes a final checkpoint first, which leaves nothing here).
    fn finish(&mut self) -> Result<()> {
        self.write_out()
    }

    fn prepare_commit(&mut self, checkpoint_id: u64) -> Result<Vec<u8>> {
        let _ = checkpoint_id;
        if !self.exactly_once {
            self.write_out()?;
            return Ok(Vec::new());
        }
        if self.rows.is_empty() {
            return Ok(Vec::new());
        }
        let rows = std::mem::take(&mut self.rows);
        let rows = self.compact(rows);
        Ok(encode_committable(self.subtask, &rows))
    }

    fn commit(&mut self, sequence: u64, committable: &[u8]) -> Result<()> {
        if committable.is_empty() {
            return Ok(());
        }
        let (origin, rows) = decode_committable(committable)
            .map_err(|e| self.err(format!("commit {sequence:#x}: {e}")))?;
        self.ensure_marker_table()?;
        let (insert, delete, pk) = (
            self.sql.insert.clone(),
            self.sql.delete.clone(),
            self.pk.clone(),
        );
        let (job, uid) = (self.job_id.clone(), self.sink_uid.clone());
        let cp = i64::try_from(sequence)
            .map_err(|_| self.err(format!("commit sequence {sequence:#x} too large")))?;
        self.with_conn(
            &format!("committing {sequence:#x} of subtask {origin}"),
            async move |c| {
                let mut tx = c.begin().await?;
                let ins = format!(
                    "INSERT INTO {MARKER_TABLE} (job_id, sink_uid, subtask, checkpoint_id)
                     VALUES ($1, $2, $3, -1) ON CONFLICT DO NOTHING"
                );
                sqlx::query(AssertSqlSafe(ins))
                    .bind(&job)
                    .bind(&uid)
                    .bind(origin as i32)
                    .execute(&mut *tx)
                    .await?;
                // The row lock orders concurrent committers of the same subtask.
                let sel = format!(
                    "SELECT checkpoint_id FROM {MARKER_TABLE}
                     WHERE job_id = $1 AND sink_uid = $2 AND subtask = $3 FOR UPDATE"
                );
                let done: i64 = sqlx::query_scalar(AssertSqlSafe(sel))
                    .bind(&job)
                    .bind(&uid)
                    .bind(origin as i32)
                    .fetch_one(&mut *tx)
                    .await?;
                if done >= cp {
                    return tx.rollback().await;
                }
                apply(&mut tx, &insert, delete.as_deref(), &pk, &rows).await?;
                let upd = format!(
                    "UPDATE {MARKER_TABLE} SET checkpoint_id = $4, committed_at = now()
                     WHERE job_id = $1 AND sink_uid = $2 AND subtask = $3"
                );
                sqlx::query(AssertSqlSafe(upd))
                    .bind(&job)
                    .bind(&uid)
                    .bind(origin as i32)
                    .bind(cp)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_follow_postgres_folding_and_are_quoted() {
        assert_eq!(ident("Orders"), "\"orders\"");
        assert_eq!(ident("\"Orders\""), "\"Orders\"");
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(table_ident("Public.T"), "\"public\".\"t\"");
        assert_eq!(table_ident("\"a.b\".c"), "\"a.b\".\"c\"");
    }

    #[test]
    fn urls_in_jdbc_and_postgres_form() {
        assert_eq!(
            pg_connect_url("jdbc:postgresql://h:5432/db").as_deref(),
            Ok("postgresql://h:5432/db")
        );
        assert_eq!(
            pg_connect_url("postgres://h/db").as_deref(),
            Ok("postgres://h/db")
        );
        assert!(pg_connect_url("jdbc:mysql://h/db").is_err());
    }

    #[test]
    fn committable_round_trips() {
        let rows = vec![
            (Op::Upsert, vec![Some("1".to_string()), None]),
            (Op::Delete, vec![Some("2".to_string()), Some("x\"y".into())]),
        ];
        let c = encode_committable(3, &rows);
        let (s, back) = decode_committable(&c).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s, 3);
        assert_eq!(back, rows);
    }
}
