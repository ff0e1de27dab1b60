//! The generator of `src/generated.rs` (the operations of [`sluice_client::Client`]) from
//! `openapi/openapi.json`.
//!
//! One `async fn` per operation, named by its `operationId`: path parameters in the order of
//! the path template, then a `…Query` struct generated from the query parameters, then the
//! JSON body, then the header parameters (`If-Match`, `Idempotency-Key`) as `Option<&str>`.
//! The success response decides the return type: a `$ref` to a component schema is the type of
//! that name in `sluice-api-types` (the types the server serialises, so the mapping is checked
//! by the compiler and by the API tests), `Versioned<T>` when the response declares an `ETag`,
//! `()` without content and `String` for text. Anything the generator does not understand is
//! an error naming the operation and the spec location, never a silently skipped operation.
//!
//! Not a library of its own: `tests/codegen.rs` includes it, regenerates the client and fails
//! on drift (`SLUICE_WRITE_CLIENT=1` writes the file), like `openapi/openapi.json` itself.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write};

use serde_json::{Map, Value};

/// Why the document cannot be turned into a client: what, and where in the document.
#[derive(Debug)]
pub struct CodegenError {
    pub at: String,
    pub message: String,
}

impl fmt::Display for CodegenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "openapi.json, {}: {}", self.at, self.message)
    }
}

impl std::error::Error for CodegenError {}

type Result<T> = std::result::Result<T, CodegenError>;

fn err<T>(at: &str, message: impl Into<String>) -> Result<T> {
    Err(CodegenError {
        at: at.to_owned(),
        message: message.into(),
    })
}

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "patch", "head", "options", "trace",
];

/// One operation of the document, as the generator sees it.
#[derive(Debug)]
pub struct Op {
    pub method: String,
    pub path: String,
    pub operation_id: String,
    at: String,
    doc: Vec<String>,
    auth: bool,
    path_params: Vec<Param>,
    query: Vec<Param>,
    headers: Vec<Param>,
    body: Option<Body>,
    response: Response,
}

#[derive(Debug)]
struct Param {
    name: String,
    ident: String,
    ty: String,
    required: bool,
    by_ref: bool,
    doc: Option<String>,
}

#[derive(Debug)]
struct Body {
    ty: String,
    optional: bool,
}

#[derive(Debug)]
enum Response {
    Empty,
    /// `text`: the text media types the operation offers besides JSON (a `…_text` method).
    Json {
        ty: String,
        etag: bool,
        text: Vec<String>,
    },
    Text,
}

/// Every operation of `doc`, sorted by path and method (the document's own key order depends
/// on serde_json features that differ between builds).
pub fn operations(doc: &Value) -> Result<Vec<Op>> {
    let version = doc["openapi"].as_str().unwrap_or_default();
    if !(version.starts_with("3.1") || version.starts_with("3.0")) {
        return err(
            "field openapi",
            format!("version {version:?} is not OpenAPI 3.0 or 3.1"),
        );
    }
    let schemas = doc["components"]["schemas"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let default_security = doc.get("security");
    let Some(paths) = doc["paths"].as_object() else {
        return err("field paths", "missing or not an object");
    };
    let mut ops = Vec::new();
    let mut seen = BTreeMap::new();
    for (path, item) in paths {
        let Some(item) = item.as_object() else {
            return err(&format!("path {path}"), "not an object");
        };
        let shared = item.get("parameters").and_then(Value::as_array);
        for (method, op) in item {
            if !METHODS.contains(&method.as_str()) {
                if method != "parameters" && method != "summary" && method != "description" {
                    return err(
                        &format!("path {path} field {method}"),
                        "unknown path item field",
                    );
                }
                continue;
            }
            let at = format!("{} {path}", method.to_uppercase());
            let op = operation(&schemas, default_security, path, method, op, shared, &at)?;
            if let Some(other) = seen.insert(op.operation_id.clone(), at.clone()) {
                return err(
                    &at,
                    format!(
                        "operationId {:?} is also used by {other}; operationIds must be unique",
                        op.operation_id
                    ),
                );
            }
            ops.push(op);
        }
    }
    for op in &ops {
        if let Response::Json { text, .. } = &op.response
            && !text.is_empty()
            && let Some(other) = seen.get(&text_method(op))
        {
            return err(
                &op.at,
                format!(
                    "the method of its text answer, {}, is the operationId of {other}",
                    text_method(op)
                ),
            );
        }
    }
    ops.sort_by(|a, b| (&a.path, &a.method).cmp(&(&b.path, &b.method)));
    Ok(ops)
}

fn operation(
    schemas: &Map<String, Value>,
    default_security: Option<&Value>,
    path: &str,
    method: &str,
    op: &Value,
    shared: Option<&Vec<Value>>,
    at: &str,
) -> Result<Op> {
    let Some(operation_id) = op["operationId"].as_str() else {
        return err(at, "no operationId: the client names its method after it");
    };
    if !is_snake_ident(operation_id) {
        return err(
            at,
            format!("operationId {operation_id:?} is not a snake_case identifier"),
        );
    }
    let mut doc = Vec::new();
    for key in ["summary", "description"] {
        if let Some(text) = op[key].as_str() {
            if !doc.is_empty() {
                doc.push(String::new());
            }
            doc.extend(text.lines().map(|l| l.trim_end().to_owned()));
        }
    }
    if !doc.is_empty() {
        doc.push(String::new());
    }
    doc.push(format!("`{} {path}`", method.to_uppercase()));

    let security = op.get("security").or(default_security);
    let auth = security.and_then(Value::as_array).is_some_and(|s| {
        s.iter()
            .any(|r| r.as_object().is_some_and(|r| !r.is_empty()))
    });

    let mut path_params = Vec::new();
    let mut query = Vec::new();
    let mut headers = Vec::new();
    let own = op["parameters"].as_array();
    let all = shared
        .into_iter()
        .flatten()
        .chain(own.into_iter().flatten());
    for (i, p) in all.enumerate() {
        let pat = format!("{at} parameters[{i}]");
        if p.get("$ref").is_some() {
            return err(&pat, "parameter $refs are not supported");
        }
        let (Some(name), Some(place)) = (p["name"].as_str(), p["in"].as_str()) else {
            return err(&pat, "a parameter needs `name` and `in`");
        };
        let required = p["required"].as_bool().unwrap_or(false);
        let ident = ident(&name.to_lowercase().replace('-', "_"));
        let doc = p["description"].as_str().map(|d| d.replace('\n', " "));
        let schema = &p["schema"];
        match place {
            "path" => {
                let resolved = resolve(schemas, schema, &pat)?;
                let (ty, by_ref) = match resolved["type"].as_str() {
                    Some("string") => ("str".to_owned(), true),
                    Some("integer") => (integer(resolved), false),
                    other => {
                        return err(&pat, format!("path parameter of type {other:?}"));
                    }
                };
                path_params.push(Param {
                    name: name.to_owned(),
                    ident,
                    ty,
                    required: true,
                    by_ref,
                    doc,
                });
            }
            "query" => query.push(Param {
                name: name.to_owned(),
                ident,
                ty: rust_type(schemas, schema, &pat)?,
                required,
                by_ref: false,
                doc,
            }),
            "header" => headers.push(Param {
                name: name.to_owned(),
                ident,
                ty: "str".to_owned(),
                required,
                by_ref: true,
                doc,
            }),
            other => return err(&pat, format!("parameters in {other:?} are not supported")),
        }
    }
    let placeholders = placeholders(path);
    let declared: BTreeSet<&str> = path_params.iter().map(|p| p.name.as_str()).collect();
    if placeholders.iter().copied().collect::<BTreeSet<_>>() != declared
        || placeholders.len() != declared.len()
    {
        return err(
            at,
            format!(
                "path placeholders {placeholders:?} do not match the path parameters {declared:?}"
            ),
        );
    }
    path_params.sort_by_key(|p| placeholders.iter().position(|n| *n == p.name));

    let body = match op.get("requestBody") {
        None => None,
        Some(b) => Some(request_body(schemas, b, &format!("{at} requestBody"))?),
    };
    let response = success_response(schemas, &op["responses"], &format!("{at} responses"))?;
    Ok(Op {
        method: method.to_owned(),
        path: path.to_owned(),
        operation_id: operation_id.to_owned(),
        at: at.to_owned(),
        doc,
        auth,
        path_params,
        query,
        headers,
        body,
        response,
    })
}

fn request_body(schemas: &Map<String, Value>, b: &Value, at: &str) -> Result<Body> {
    let Some(content) = b["content"].as_object() else {
        return err(at, "a request body without content");
    };
    let Some(json) = content.get("application/json") else {
        let types: Vec<&String> = content.keys().collect();
        return err(
            at,
            format!("request bodies of {types:?}: only JSON is supported"),
        );
    };
    let schema = &json["schema"];
    let mut optional = !b["required"].as_bool().unwrap_or(false);
    // utoipa writes `Option<T>` bodies as `oneOf: [T, null]`.
    let schema = match schema["oneOf"].as_array().map(Vec::as_slice) {
        Some([t, n]) if n["type"] == "null" => {
            optional = true;
            t
        }
        _ => schema,
    };
    Ok(Body {
        ty: rust_type(schemas, schema, &format!("{at} content application/json"))?,
        optional,
    })
}

fn success_response(schemas: &Map<String, Value>, responses: &Value, at: &str) -> Result<Response> {
    let Some(responses) = responses.as_object() else {
        return err(at, "no responses");
    };
    let ok: Vec<(&String, &Value)> = responses
        .iter()
        .filter(|(c, _)| c.starts_with('2'))
        .collect();
    let [(code, r)] = ok.as_slice() else {
        let codes: Vec<&String> = ok.iter().map(|(c, _)| *c).collect();
        return err(
            at,
            format!("{codes:?}: exactly one success response is supported"),
        );
    };
    let at = format!("{at}.{code}");
    let etag = r["headers"]
        .as_object()
        .is_some_and(|h| h.keys().any(|k| k.eq_ignore_ascii_case("etag")));
    let content = r["content"].as_object().cloned().unwrap_or_default();
    if content.is_empty() {
        return Ok(Response::Empty);
    }
    // JSON when the operation offers it (alternatives such as CSV are chosen by a parameter).
    let json = content
        .iter()
        .find(|(t, _)| *t == "application/json")
        .or_else(|| content.iter().find(|(t, _)| t.ends_with("+json")));
    if let Some((t, c)) = json {
        let ty = rust_type(schemas, &c["schema"], &format!("{at} content {t}"))?;
        let text = content
            .keys()
            .filter(|t| t.starts_with("text/"))
            .cloned()
            .collect();
        return Ok(Response::Json { ty, etag, text });
    }
    if content.keys().all(|t| t.starts_with("text/")) {
        return Ok(Response::Text);
    }
    let types: Vec<&String> = content.keys().collect();
    err(
        &at,
        format!("responses of {types:?}: neither JSON nor text"),
    )
}

fn component<'a>(
    schemas: &'a Map<String, Value>,
    r: &str,
    at: &str,
) -> Result<(&'a str, &'a Value)> {
    let Some(name) = r.strip_prefix("#/components/schemas/") else {
        return err(at, format!("$ref {r:?} is not a component schema"));
    };
    match schemas.get_key_value(name) {
        Some((k, v)) => Ok((k.as_str(), v)),
        None => err(at, format!("dangling $ref {r:?}")),
    }
}

fn resolve<'a>(schemas: &'a Map<String, Value>, schema: &'a Value, at: &str) -> Result<&'a Value> {
    match schema["$ref"].as_str() {
        Some(r) => component(schemas, r, at).map(|(_, s)| s),
        None => Ok(schema),
    }
}

fn integer(schema: &Value) -> String {
    let unsigned = schema["minimum"].as_f64().is_some_and(|m| m >= 0.0);
    match (schema["format"].as_str(), unsigned) {
        (Some("int32"), true) => "u32",
        (Some("int32"), false) => "i32",
        (_, true) => "u64",
        (_, false) => "i64",
    }
    .to_owned()
}

fn rust_type(schemas: &Map<String, Value>, schema: &Value, at: &str) -> Result<String> {
    if let Some(r) = schema["$ref"].as_str() {
        let (name, _) = component(schemas, r, at)?;
        if !is_type_ident(name) {
            return err(at, format!("schema name {name:?} is not a Rust type name"));
        }
        return Ok(format!("types::{name}"));
    }
    Ok(match schema["type"].as_str() {
        Some("string") => match schema["format"].as_str() {
            Some("date-time") => "chrono::DateTime<chrono::Utc>".to_owned(),
            _ => "String".to_owned(),
        },
        Some("integer") => integer(schema),
        Some("number") => "f64".to_owned(),
        Some("boolean") => "bool".to_owned(),
        Some("array") => format!(
            "Vec<{}>",
            rust_type(schemas, &schema["items"], &format!("{at} items"))?
        ),
        Some("object") if schema.get("properties").is_none() => "serde_json::Value".to_owned(),
        other => {
            return err(
                at,
                format!("inline schema of type {other:?} is not supported"),
            );
        }
    })
}

fn placeholders(path: &str) -> Vec<&str> {
    path.split('{')
        .skip(1)
        .filter_map(|s| s.split_once('}').map(|(name, _)| name))
        .collect()
}

fn is_snake_ident(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn is_type_ident(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_uppercase()) && s.chars().all(|c| c.is_ascii_alphanumeric())
}

const KEYWORDS: &[&str] = &[
    "as", "async", "await", "break", "const", "continue", "crate", "dyn", "else", "enum", "extern",
    "false", "fn", "for", "gen", "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut",
    "pub", "ref", "return", "self", "static", "struct", "super", "trait", "true", "type", "unsafe",
    "use", "where", "while",
];

fn ident(s: &str) -> String {
    if KEYWORDS.contains(&s) {
        format!("r#{s}")
    } else {
        s.to_owned()
    }
}

fn pascal(s: &str) -> String {
    s.split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

fn doc_lines(out: &mut String, indent: &str, lines: &[String]) {
    for l in lines {
        if l.is_empty() {
            let _ = writeln!(out, "{indent}///");
        } else {
            let _ = writeln!(out, "{indent}/// {l}");
        }
    }
}

/// The Rust source of `src/generated.rs` (before rustfmt).
pub fn generate(doc: &Value) -> Result<String> {
    let ops = operations(doc)?;
    let mut out = String::new();
    out.push_str(
        "// @generated by openapi/client/codegen.rs from openapi/openapi.json: do not edit.\n\
         // Regenerate with `SLUICE_WRITE_CLIENT=1 dev/cargo test -p sluice-client --test codegen`.\n\n\
         use reqwest::Method;\n\
         use sluice_api_types as types;\n\n\
         use crate::{Client, Result, Versioned, segment};\n\n",
    );
    out.push_str(
        "/// An operation of the API: what `openapi/openapi.json` declares and the method that calls it.\n\
         #[derive(Debug, Clone, Copy, PartialEq, Eq)]\n\
         pub struct Route {\n\
         pub method: &'static str,\n\
         pub path: &'static str,\n\
         /// The `operationId`, which is also the name of the [`Client`] method.\n\
         pub operation_id: &'static str,\n\
         }\n\n\
         /// Every operation of the document, sorted by path and method.\n\
         pub const ROUTES: &[Route] = &[\n",
    );
    for op in &ops {
        let _ = writeln!(
            out,
            "Route {{ method: {:?}, path: {:?}, operation_id: {:?} }},",
            op.method.to_uppercase(),
            op.path,
            op.operation_id
        );
    }
    out.push_str("];\n\n");

    for op in ops.iter().filter(|o| !o.query.is_empty()) {
        let all_optional = op.query.iter().all(|p| !p.required);
        let _ = writeln!(
            out,
            "/// The query parameters of [`Client::{}`].",
            op.operation_id
        );
        let derive = if all_optional {
            "Debug, Clone, Default, serde::Serialize"
        } else {
            "Debug, Clone, serde::Serialize"
        };
        let _ = writeln!(
            out,
            "#[derive({derive})]\npub struct {}Query {{",
            pascal(&op.operation_id)
        );
        for p in &op.query {
            if let Some(d) = &p.doc {
                doc_lines(&mut out, "", std::slice::from_ref(d));
            }
            if p.ident.trim_start_matches("r#") != p.name {
                let _ = writeln!(out, "#[serde(rename = {:?})]", p.name);
            }
            if p.required {
                let _ = writeln!(out, "pub {}: {},", p.ident, p.ty);
            } else {
                let _ = writeln!(
                    out,
                    "#[serde(skip_serializing_if = \"Option::is_none\")]\npub {}: Option<{}>,",
                    p.ident, p.ty
                );
            }
        }
        out.push_str("}\n\n");
    }

    out.push_str("impl Client {\n");
    for op in &ops {
        method(&mut out, op)?;
    }
    out.push_str("}\n");
    Ok(out)
}

fn method(out: &mut String, op: &Op) -> Result<()> {
    emit(out, op, &op.operation_id, &op.response, &op.doc)?;
    if let Response::Json { text, .. } = &op.response
        && !text.is_empty()
    {
        let doc = vec![
            format!(
                "[`Client::{}`] as text ({}), as its `format` parameter chooses.",
                op.operation_id,
                text.iter()
                    .map(|t| format!("`{t}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            String::new(),
            format!("`{} {}`", op.method.to_uppercase(), op.path),
        ];
        emit(out, op, &text_method(op), &Response::Text, &doc)?;
    }
    Ok(())
}

/// The name of the method that reads an operation's text alternative.
fn text_method(op: &Op) -> String {
    format!("{}_text", op.operation_id)
}

fn emit(out: &mut String, op: &Op, name: &str, response: &Response, doc: &[String]) -> Result<()> {
    doc_lines(out, "", doc);
    let mut args = vec!["&self".to_owned()];
    for p in &op.path_params {
        args.push(if p.by_ref {
            format!("{}: &{}", p.ident, p.ty)
        } else {
            format!("{}: {}", p.ident, p.ty)
        });
    }
    if !op.query.is_empty() {
        args.push(format!("query: &{}Query", pascal(&op.operation_id)));
    }
    if let Some(b) = &op.body {
        args.push(if b.optional {
            format!("body: Option<&{}>", b.ty)
        } else {
            format!("body: &{}", b.ty)
        });
    }
    for h in &op.headers {
        args.push(if h.required {
            format!("{}: &str", h.ident)
        } else {
            format!("{}: Option<&str>", h.ident)
        });
    }
    let ret = match response {
        Response::Empty => "()".to_owned(),
        Response::Json { ty, etag: true, .. } => format!("Versioned<{ty}>"),
        Response::Json {
            ty, etag: false, ..
        } => ty.clone(),
        Response::Text => "String".to_owned(),
    };
    let _ = writeln!(
        out,
        "pub async fn {}({}) -> Result<{ret}> {{",
        name,
        args.join(", ")
    );

    // The path: literal pieces and percent-encoded parameters.
    let mut pieces = Vec::new();
    let mut rest = op.path.as_str();
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            return err(&op.at, "unclosed `{` in the path");
        };
        if open > 0 {
            pieces.push(format!("{:?}", &rest[..open]));
        }
        let name = &rest[open + 1..open + close];
        let Some(p) = op.path_params.iter().find(|p| p.name == name) else {
            return err(
                &op.at,
                format!("no parameter for the path placeholder {name:?}"),
            );
        };
        pieces.push(if p.by_ref {
            format!("&segment({:?}, {})?", p.name, p.ident)
        } else {
            format!("&segment({:?}, &{}.to_string())?", p.name, p.ident)
        });
        rest = &rest[open + close + 1..];
    }
    if !rest.is_empty() {
        pieces.push(format!("{rest:?}"));
    }
    let path = if op.path_params.is_empty() {
        format!("{:?}", op.path)
    } else {
        format!("&[{}].concat()", pieces.join(", "))
    };
    let method = match op.method.as_str() {
        "get" => "GET",
        "put" => "PUT",
        "post" => "POST",
        "delete" => "DELETE",
        "patch" => "PATCH",
        "head" => "HEAD",
        "options" => "OPTIONS",
        _ => "TRACE",
    };
    let _ = write!(out, "self.call(Method::{method}, {path}, {})", op.auth);
    if !op.query.is_empty() {
        out.push_str(".query(query)?");
    }
    if let Some(b) = &op.body {
        if b.optional {
            out.push_str(".json(body)?");
        } else {
            out.push_str(".json(Some(body))?");
        }
    }
    for h in &op.headers {
        if h.required {
            let _ = write!(out, ".header({:?}, Some({}))", h.name, h.ident);
        } else {
            let _ = write!(out, ".header({:?}, {})", h.name, h.ident);
        }
    }
    out.push_str(".send().await?");
    out.push_str(match response {
        Response::Empty => ".empty()",
        Response::Json { etag: true, .. } => ".versioned()",
        Response::Json { etag: false, .. } => ".json()",
        Response::Text => ".text()",
    });
    out.push_str("\n}\n\n");
    Ok(())
}
