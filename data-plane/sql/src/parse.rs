//! Statement splitting and the Flink-only statements sqlparser does not know.
//!
//! The text is tokenized once with positions; statements are cut at top-level
//! semicolons; `CREATE TABLE` is parsed here by driving sqlparser's `Parser`
//! piece by piece (identifiers, expressions) so Flink DDL (computed columns,
//! `WATERMARK FOR`, `PRIMARY KEY … NOT ENFORCED`, `WITH ('k'='v')`) keeps exact
//! spans; `INSERT INTO … SELECT` goes to sqlparser's query parser.

use arrow_schema::DataType;
use sqlparser::ast::{Expr as AstExpr, Query};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Location, Span, Token, TokenWithSpan, Tokenizer, Word};

use crate::error::{ErrorCode, SqlError, SqlResult, from_parser_error};
use crate::types;

#[derive(Debug, Clone)]
pub enum Statement {
    CreateTable(CreateTable),
    Insert(Insert),
    Set { key: String, value: String },
}

#[derive(Debug, Clone)]
pub struct CreateTable {
    pub name: String,
    pub name_span: Span,
    pub elements: Vec<TableElement>,
    pub options: Vec<OptionEntry>,
}

#[derive(Debug, Clone)]
pub enum TableElement {
    Physical {
        name: String,
        ty: DataType,
        span: Span,
    },
    Computed {
        name: String,
        expr: AstExpr,
        span: Span,
    },
    Watermark {
        column: String,
        expr: AstExpr,
        span: Span,
    },
    PrimaryKey {
        columns: Vec<(String, Span)>,
        span: Span,
    },
}

#[derive(Debug, Clone)]
pub struct OptionEntry {
    pub key: String,
    pub value: String,
    pub key_span: Span,
    pub value_span: Span,
}

#[derive(Debug, Clone)]
pub struct Insert {
    pub target: String,
    pub target_span: Span,
    pub query: Box<Query>,
}

fn significant(t: &TokenWithSpan) -> bool {
    !matches!(t.token, Token::Whitespace(_))
}

fn is_word(t: &TokenWithSpan, kw: &str) -> bool {
    matches!(&t.token, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(kw))
}

/// Splits the text into statements and parses each one. Errors of different
/// statements are all reported; parsing stops at the first error of a statement.
pub fn parse_statements(sql: &str) -> Result<Vec<Statement>, Vec<SqlError>> {
    let dialect = GenericDialect {};
    let tokens = Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .map_err(|e| {
            vec![SqlError::at(
                e.location,
                ErrorCode::SyntaxError,
                e.message.clone(),
            )]
        })?;
    let mut chunks: Vec<Vec<TokenWithSpan>> = Vec::new();
    let mut cur = Vec::new();
    let mut depth = 0i32;
    for t in tokens {
        match t.token {
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            Token::SemiColon if depth <= 0 => {
                chunks.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(t);
    }
    chunks.push(cur);

    let mut out = Vec::new();
    let mut errors = Vec::new();
    for chunk in chunks {
        let mut sig: Vec<TokenWithSpan> = chunk.into_iter().filter(significant).collect();
        if sig.is_empty() {
            continue;
        }
        // `EXECUTE STATEMENT SET BEGIN stmt; …; END;` and `BEGIN STATEMENT SET; … END;`:
        // the markers only group INSERTs, which run together anyway.
        if sig.len() >= 4
            && is_word(&sig[0], "EXECUTE")
            && is_word(&sig[1], "STATEMENT")
            && is_word(&sig[2], "SET")
            && is_word(&sig[3], "BEGIN")
        {
            sig.drain(..4);
        } else if sig.len() == 3
            && is_word(&sig[0], "BEGIN")
            && is_word(&sig[1], "STATEMENT")
            && is_word(&sig[2], "SET")
        {
            continue;
        }
        if sig.len() == 1 && is_word(&sig[0], "END") {
            continue;
        }
        if sig.is_empty() {
            continue;
        }
        match parse_one(sig) {
            Ok(s) => out.push(s),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn parse_one(tokens: Vec<TokenWithSpan>) -> SqlResult<Statement> {
    let tokens = rewrite_json_value_clauses(tokens);
    let first = tokens[0].clone();
    if is_word(&first, "CREATE") {
        return parse_create(tokens);
    }
    if is_word(&first, "INSERT") {
        return parse_insert(tokens);
    }
    if is_word(&first, "SET") {
        return parse_set(tokens);
    }
    let what = match &first.token {
        Token::Word(w) => w.value.to_uppercase(),
        other => other.to_string(),
    };
    Err(SqlError::span(
        first.span,
        ErrorCode::Unsupported,
        format!(
            "unsupported statement starting with {what}: a job consists of CREATE TABLE, SET and INSERT INTO statements (optionally inside EXECUTE STATEMENT SET)"
        ),
    ))
}

struct P<'a> {
    parser: Parser<'a>,
    last: Location,
}

static DIALECT: GenericDialect = GenericDialect {};

impl<'a> P<'a> {
    fn new(tokens: Vec<TokenWithSpan>) -> Self {
        let last = tokens
            .last()
            .map(|t| t.span.end)
            .unwrap_or(Location { line: 1, column: 1 });
        P {
            parser: Parser::new(&DIALECT).with_tokens_with_locations(tokens),
            last,
        }
    }

    fn peek(&self) -> TokenWithSpan {
        self.parser.peek_token()
    }

    fn here(&self) -> Location {
        let t = self.peek();
        if t.token == Token::EOF {
            self.last
        } else {
            t.span.start
        }
    }

    fn err_here(&self, message: impl Into<String>) -> SqlError {
        let t = self.peek();
        let found = if t.token == Token::EOF {
            "end of statement".to_string()
        } else {
            format!("'{}'", t.token)
        };
        SqlError::at(
            self.here(),
            ErrorCode::SyntaxError,
            format!("{}, found {found}", message.into()),
        )
    }

    fn word(&mut self, kw: &str) -> bool {
        if is_word(&self.peek(), kw) {
            self.parser.next_token();
            true
        } else {
            false
        }
    }

    fn expect_word(&mut self, kw: &str) -> SqlResult<()> {
        if self.word(kw) {
            Ok(())
        } else {
            Err(self.err_here(format!("expected {kw}")))
        }
    }

    fn token(&mut self, t: &Token) -> bool {
        self.parser.consume_token(t)
    }

    fn expect_token(&mut self, t: &Token) -> SqlResult<()> {
        if self.token(t) {
            Ok(())
        } else {
            Err(self.err_here(format!("expected '{t}'")))
        }
    }

    fn ident(&mut self) -> SqlResult<(String, Span)> {
        let t = self.peek();
        match &t.token {
            Token::Word(Word { value, .. }) => {
                self.parser.next_token();
                Ok((value.clone(), t.span))
            }
            _ => Err(self.err_here("expected an identifier")),
        }
    }

    /// `a.b.c` → `c`: catalogs and databases are not modelled; the last part names the table.
    fn object_name(&mut self) -> SqlResult<(String, Span)> {
        let (mut name, mut span) = self.ident()?;
        while self.token(&Token::Period) {
            let (n, s) = self.ident()?;
            name = n;
            span = s;
        }
        Ok((name, span))
    }

    fn string(&mut self) -> SqlResult<(String, Span)> {
        let t = self.peek();
        match &t.token {
            Token::SingleQuotedString(s) => {
                self.parser.next_token();
                Ok((s.clone(), t.span))
            }
            _ => Err(self.err_here("expected a quoted string")),
        }
    }

    fn expr(&mut self) -> SqlResult<AstExpr> {
        let here = self.here();
        self.parser
            .parse_expr()
            .map_err(|e| from_parser_error(e, here))
    }

    fn expect_end(&mut self) -> SqlResult<()> {
        if self.peek().token == Token::EOF {
            Ok(())
        } else {
            Err(self.err_here("expected end of statement"))
        }
    }

    fn number(&mut self) -> SqlResult<u32> {
        let t = self.peek();
        match &t.token {
            Token::Number(n, _) => {
                self.parser.next_token();
                n.parse().map_err(|_| {
                    SqlError::span(t.span, ErrorCode::SyntaxError, "expected a small integer")
                })
            }
            _ => Err(self.err_here("expected a number")),
        }
    }

    /// Flink's type names. Precision arguments are accepted where Flink takes
    /// them; types outside the supported subset are rejected by name.
    fn data_type(&mut self) -> SqlResult<DataType> {
        let start = self.peek();
        let (name, span) = self.ident()?;
        let upper = name.to_uppercase();
        let mut args = Vec::new();
        if self.token(&Token::LParen) {
            loop {
                args.push(self.number()?);
                if !self.token(&Token::Comma) {
                    break;
                }
            }
            self.expect_token(&Token::RParen)?;
        }
        let unsupported = |what: &str| {
            SqlError::span(
                span,
                ErrorCode::Unsupported,
                format!("unsupported column type {what}"),
            )
        };
        let ty = match upper.as_str() {
            "STRING" | "VARCHAR" | "CHAR" | "TEXT" => DataType::Utf8,
            "BOOLEAN" | "BOOL" => DataType::Boolean,
            "TINYINT" => DataType::Int8,
            "SMALLINT" => DataType::Int16,
            "INT" | "INTEGER" => DataType::Int32,
            "BIGINT" => DataType::Int64,
            "FLOAT" | "REAL" => DataType::Float32,
            "DOUBLE" => {
                self.word("PRECISION");
                DataType::Float64
            }
            "DATE" => DataType::Date32,
            "TIMESTAMP" => {
                if let Some(p) = args.first().filter(|p| **p != 3) {
                    return Err(unsupported(&format!(
                        "TIMESTAMP({p}): only millisecond precision TIMESTAMP(3) is supported"
                    )));
                }
                if self.word("WITH") {
                    self.expect_word("LOCAL")?;
                    self.expect_word("TIME")?;
                    self.expect_word("ZONE")?;
                    types::timestamp_ltz()
                } else {
                    if self.word("WITHOUT") {
                        self.expect_word("TIME")?;
                        self.expect_word("ZONE")?;
                    }
                    types::timestamp()
                }
            }
            "TIMESTAMP_LTZ" => {
                if let Some(p) = args.first().filter(|p| **p != 3) {
                    return Err(unsupported(&format!(
                        "TIMESTAMP_LTZ({p}): only millisecond precision TIMESTAMP_LTZ(3) is supported"
                    )));
                }
                types::timestamp_ltz()
            }
            _ => return Err(unsupported(&start.token.to_string())),
        };
        if self.word("NOT") {
            self.expect_word("NULL")?;
        } else {
            self.word("NULL");
        }
        Ok(ty)
    }
}

fn parse_set(tokens: Vec<TokenWithSpan>) -> SqlResult<Statement> {
    let mut p = P::new(tokens);
    p.expect_word("SET")?;
    let (key, _) = p.string()?;
    p.expect_token(&Token::Eq)?;
    let (value, _) = p.string()?;
    p.expect_end()?;
    Ok(Statement::Set { key, value })
}

fn parse_create(tokens: Vec<TokenWithSpan>) -> SqlResult<Statement> {
    let mut p = P::new(tokens);
    p.expect_word("CREATE")?;
    p.word("TEMPORARY");
    if !is_word(&p.peek(), "TABLE") {
        let t = p.peek();
        return Err(SqlError::span(
            t.span,
            ErrorCode::Unsupported,
            format!(
                "unsupported statement CREATE {}: only CREATE TABLE is supported",
                t.token
            ),
        ));
    }
    p.expect_word("TABLE")?;
    if p.word("IF") {
        p.expect_word("NOT")?;
        p.expect_word("EXISTS")?;
    }
    let (name, name_span) = p.object_name()?;
    p.expect_token(&Token::LParen)?;
    let mut elements = Vec::new();
    loop {
        let start = p.peek().span;
        if p.word("WATERMARK") {
            p.expect_word("FOR")?;
            let (column, _) = p.ident()?;
            p.expect_word("AS")?;
            let expr = p.expr()?;
            elements.push(TableElement::Watermark {
                column,
                expr,
                span: start,
            });
        } else if is_word(&p.peek(), "PRIMARY") || is_word(&p.peek(), "CONSTRAINT") {
            if p.word("CONSTRAINT") {
                p.ident()?;
            }
            p.expect_word("PRIMARY")?;
            p.expect_word("KEY")?;
            p.expect_token(&Token::LParen)?;
            let mut columns = vec![p.ident()?];
            while p.token(&Token::Comma) {
                columns.push(p.ident()?);
            }
            p.expect_token(&Token::RParen)?;
            p.expect_word("NOT")?;
            p.expect_word("ENFORCED")?;
            elements.push(TableElement::PrimaryKey {
                columns,
                span: start,
            });
        } else {
            let (col, span) = p.ident()?;
            if p.word("AS") {
                let expr = p.expr()?;
                elements.push(TableElement::Computed {
                    name: col,
                    expr,
                    span,
                });
            } else {
                let ty = p.data_type()?;
                if is_word(&p.peek(), "METADATA") {
                    return Err(SqlError::span(
                        p.peek().span,
                        ErrorCode::Unsupported,
                        "unsupported construct: METADATA columns",
                    ));
                }
                elements.push(TableElement::Physical {
                    name: col,
                    ty,
                    span,
                });
            }
            if p.word("COMMENT") {
                p.string()?;
            }
        }
        if p.token(&Token::Comma) {
            continue;
        }
        p.expect_token(&Token::RParen)?;
        break;
    }
    if p.word("COMMENT") {
        p.string()?;
    }
    if is_word(&p.peek(), "PARTITIONED") {
        return Err(SqlError::span(
            p.peek().span,
            ErrorCode::Unsupported,
            "unsupported construct: PARTITIONED BY",
        ));
    }
    let mut options = Vec::new();
    if p.word("WITH") {
        p.expect_token(&Token::LParen)?;
        if !p.token(&Token::RParen) {
            loop {
                let (key, key_span) = p.string()?;
                p.expect_token(&Token::Eq)?;
                let (value, value_span) = p.string()?;
                options.push(OptionEntry {
                    key,
                    value,
                    key_span,
                    value_span,
                });
                if p.token(&Token::Comma) {
                    continue;
                }
                p.expect_token(&Token::RParen)?;
                break;
            }
        }
    } else if is_word(&p.peek(), "LIKE") {
        return Err(SqlError::span(
            p.peek().span,
            ErrorCode::Unsupported,
            "unsupported construct: CREATE TABLE … LIKE",
        ));
    }
    p.expect_end()?;
    Ok(Statement::CreateTable(CreateTable {
        name,
        name_span,
        elements,
        options,
    }))
}

/// Flink's windowing TVFs take `TABLE t` as an argument, which sqlparser's
/// expression grammar does not accept; the `TABLE` keyword carries no meaning
/// for us, so it is dropped before parsing (spans of the other tokens are kept).
fn strip_tvf_table_keyword(tokens: Vec<TokenWithSpan>) -> Vec<TokenWithSpan> {
    let mut out: Vec<TokenWithSpan> = Vec::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        let prev_open = out
            .last()
            .map(|p| p.token == Token::LParen)
            .unwrap_or(false);
        let before = if out.len() >= 2 {
            Some(&out[out.len() - 2])
        } else {
            None
        };
        let in_tvf = before
            .map(|b| {
                ["TUMBLE", "HOP", "SESSION", "CUMULATE"]
                    .iter()
                    .any(|k| is_word(b, k))
            })
            .unwrap_or(false);
        let next_is_ident = matches!(tokens.get(i + 1).map(|n| &n.token), Some(Token::Word(_)));
        if is_word(t, "TABLE") && prev_open && in_tvf && next_is_ident {
            continue;
        }
        out.push(t.clone());
    }
    out
}

fn parse_insert(tokens: Vec<TokenWithSpan>) -> SqlResult<Statement> {
    let mut p = P::new(strip_tvf_table_keyword(tokens));
    p.expect_word("INSERT")?;
    if is_word(&p.peek(), "OVERWRITE") {
        return Err(SqlError::span(
            p.peek().span,
            ErrorCode::Unsupported,
            "unsupported construct: INSERT OVERWRITE",
        ));
    }
    p.expect_word("INTO")?;
    let (target, target_span) = p.object_name()?;
    if p.peek().token == Token::LParen {
        return Err(SqlError::span(
            p.peek().span,
            ErrorCode::Unsupported,
            "unsupported construct: INSERT with a column list; select the sink's columns in order",
        ));
    }
    let here = p.here();
    let query = p
        .parser
        .parse_query()
        .map_err(|e| from_parser_error(e, here))?;
    p.expect_end()?;
    Ok(Statement::Insert(Insert {
        target,
        target_span,
        query,
    }))
}

/// Prefix of the function names that carry `JSON_VALUE`'s `… ON EMPTY` /
/// `… ON ERROR` clauses as extra arguments (see [`rewrite_json_value_clauses`]).
pub(crate) const JSON_CLAUSE_PREFIX: &str = "$JSON_ON_";

/// sqlparser parses `JSON_VALUE(x, path RETURNING t)` but not Flink's
/// `{NULL | ERROR | DEFAULT expr} ON {EMPTY | ERROR}` clauses. Each clause is
/// turned into an extra argument `$JSON_ON_<EMPTY|ERROR>_<NULL|ERROR|DEFAULT>(expr)`
/// placed before `RETURNING`, with the span of its first keyword, so the binder
/// reads it like any argument and errors still point into the submitted text.
/// Tokens that do not form such a clause are left for the parser to reject.
fn rewrite_json_value_clauses(tokens: Vec<TokenWithSpan>) -> Vec<TokenWithSpan> {
    let mut out = Vec::with_capacity(tokens.len());
    let mut i = 0;
    while i < tokens.len() {
        let t = &tokens[i];
        let opens = tokens.get(i + 1).map(|n| n.token == Token::LParen) == Some(true);
        if is_word(t, "JSON_VALUE")
            && opens
            && let Some(close) = matching_paren(&tokens, i + 1)
        {
            out.push(t.clone());
            out.push(tokens[i + 1].clone());
            let inner = rewrite_json_value_clauses(tokens[i + 2..close].to_vec());
            out.extend(extract_json_clauses(inner));
            out.push(tokens[close].clone());
            i = close + 1;
            continue;
        }
        out.push(t.clone());
        i += 1;
    }
    out
}

fn matching_paren(tokens: &[TokenWithSpan], open: usize) -> Option<usize> {
    let mut depth = 0i32;
    for (j, t) in tokens.iter().enumerate().skip(open) {
        match t.token {
            Token::LParen => depth += 1,
            Token::RParen => {
                depth -= 1;
                if depth == 0 {
                    return Some(j);
                }
            }
            _ => {}
        }
    }
    None
}

/// `ON EMPTY` / `ON ERROR` starting at `j` (at nesting depth 0 of the call).
fn on_target(inner: &[TokenWithSpan], j: usize) -> Option<&'static str> {
    if !inner.get(j).is_some_and(|t| is_word(t, "ON")) {
        return None;
    }
    let t = inner.get(j + 1)?;
    if is_word(t, "EMPTY") {
        Some("EMPTY")
    } else if is_word(t, "ERROR") {
        Some("ERROR")
    } else {
        None
    }
}

fn extract_json_clauses(inner: Vec<TokenWithSpan>) -> Vec<TokenWithSpan> {
    let mut kept: Vec<TokenWithSpan> = Vec::with_capacity(inner.len());
    let mut clauses: Vec<TokenWithSpan> = Vec::new();
    let mut depth = 0i32;
    let mut returning_at: Option<usize> = None;
    let mut i = 0;
    while i < inner.len() {
        let t = &inner[i];
        if depth == 0 {
            let behaviour = ["NULL", "ERROR", "DEFAULT"]
                .into_iter()
                .find(|b| is_word(t, b));
            if let Some(b) = behaviour {
                // The clause's expression (DEFAULT only) runs to `ON EMPTY|ERROR` at depth 0.
                let mut j = i + 1;
                let mut d = 0i32;
                let mut target = None;
                if b == "DEFAULT" {
                    while j < inner.len() {
                        match inner[j].token {
                            Token::LParen => d += 1,
                            Token::RParen => d -= 1,
                            _ => {}
                        }
                        if d == 0
                            && let Some(tg) = on_target(&inner, j)
                        {
                            target = Some(tg);
                            break;
                        }
                        j += 1;
                    }
                } else {
                    target = on_target(&inner, j);
                }
                if let Some(tg) = target {
                    let span = t.span;
                    let mk = |token: Token| TokenWithSpan { token, span };
                    clauses.push(mk(Token::Comma));
                    clauses.push(mk(Token::make_word(
                        &format!("{JSON_CLAUSE_PREFIX}{tg}_{b}"),
                        Some('"'),
                    )));
                    clauses.push(mk(Token::LParen));
                    clauses.extend(inner[i + 1..j].iter().cloned());
                    clauses.push(mk(Token::RParen));
                    i = j + 2;
                    continue;
                }
            }
            if is_word(t, "RETURNING") && returning_at.is_none() {
                returning_at = Some(kept.len());
            }
        }
        match t.token {
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            _ => {}
        }
        kept.push(t.clone());
        i += 1;
    }
    let at = returning_at.unwrap_or(kept.len());
    kept.splice(at..at, clauses);
    kept
}
