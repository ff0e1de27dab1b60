//! Authentication: login, API key exchange, every 401 case of a bearer token,
//! key rotation with JWKS, revocation and deletion taking effect at once, and
//! the idempotent bootstrap.

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, TestApp, spawn_app};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Signs `claims` with the server's active key (read from its database), or
/// with `kid` overridden.
async fn forge(app: &TestApp, claims: Value, kid: Option<&str>) -> String {
    let db = app.db().await;
    let (active_kid, der): (String, Vec<u8>) =
        sqlx::query_as("SELECT kid, private_der FROM signing_keys WHERE retired_at IS NULL")
            .fetch_one(&db)
            .await
            .unwrap();
    db.close().await;
    let mut h = Header::new(Algorithm::EdDSA);
    h.kid = Some(kid.unwrap_or(&active_kid).to_owned());
    jsonwebtoken::encode(&h, &claims, &EncodingKey::from_ed_der(&der)).unwrap()
}

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&B64.decode(payload).unwrap()).unwrap()
}

#[tokio::test]
async fn every_bad_bearer_token_is_401_problem_json() {
    let app = spawn_app().await;
    let org = app.new_org("jwt").await;
    let good = claims_of(&org.admin);
    assert_eq!(app.get("/v1/me", &org.admin).await.status, 200);
    // A token forged with the real key and unchanged claims works: the negatives below fail for their one reason.
    let same = forge(&app, good.clone(), None).await;
    assert_eq!(app.get("/v1/me", &same).await.status, 200);

    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        c
    };
    let cases = vec![
        (
            "expired",
            forge(&app, with("exp", json!(now() - 3600)), None).await,
        ),
        (
            "not yet valid",
            forge(&app, with("nbf", json!(now() + 3600)), None).await,
        ),
        (
            "wrong issuer",
            forge(&app, with("iss", json!("someone-else")), None).await,
        ),
        (
            "wrong audience",
            forge(&app, with("aud", json!("another-api")), None).await,
        ),
        (
            "unknown kid",
            forge(&app, good.clone(), Some("sk_unknown")).await,
        ),
        (
            "deleted org's subject",
            forge(
                &app,
                with("sub", json!("usr_0193a1b2c3d47e8f9a0b1c2d3e4f5a6b")),
                None,
            )
            .await,
        ),
        ("garbage", "not.a.jwt".to_owned()),
    ];
    // alg none: header and claims, no signature.
    let none = format!(
        "{}.{}.",
        B64.encode(br#"{"alg":"none","typ":"JWT"}"#),
        B64.encode(serde_json::to_vec(&good).unwrap())
    );
    // HS256 keyed with the server's public key (the classic algorithm confusion).
    let jwks = app
        .call(Method::GET, "/.well-known/jwks.json", None, None)
        .await;
    let key = &jwks.body["keys"][0];
    let public = B64.decode(key["x"].as_str().unwrap()).unwrap();
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = key["kid"].as_str().map(str::to_owned);
    let hmac = jsonwebtoken::encode(&hs, &good, &EncodingKey::from_secret(&public)).unwrap();
    // A valid signature over other claims, with this token's claims spliced in.
    let parts: Vec<&str> = org.admin.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        B64.encode(
            serde_json::to_vec(&with("org", json!("org_0193a1b2c3d47e8f9a0b1c2d3e4f5a6b")))
                .unwrap()
        ),
        parts[2]
    );
    let mut all = cases;
    all.push(("alg none", none));
    all.push(("HMAC with the public key", hmac));
    all.push(("tampered claims", tampered));
    for (what, token) in all {
        let r = app.get("/v1/me", &token).await;
        assert_eq!(r.status, 401, "{what}: {}", r.body);
        r.assert_problem(401, "unauthenticated");
        assert_eq!(
            r.headers.get("www-authenticate").unwrap(),
            "Bearer",
            "{what}"
        );
    }
    let r = app.call(Method::GET, "/v1/me", None, None).await;
    r.assert_problem(401, "unauthenticated");
}

#[tokio::test]
async fn revoked_keys_deleted_users_and_expired_keys_stop_working_at_once() {
    let app = spawn_app().await;
    let org = app.new_org("revoke").await;
    let (key_id, token) = app.token_with(&org, "developer", None).await;
    assert_eq!(app.get("/v1/compute-pools", &token).await.status, 200);
    let r = app
        .call(
            Method::DELETE,
            &format!("/v1/api-keys/{key_id}"),
            Some(&org.admin),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.body);
    app.get("/v1/compute-pools", &token)
        .await
        .assert_problem(401, "unauthenticated");

    // A user's login token dies with the user.
    let email = format!("{}@example.com", sluice_test_support::unique_name("dev"));
    let u = app
        .post(
            "/v1/users",
            &org.admin,
            json!({ "email": email, "name": "Dev", "role": "developer", "password": PASSWORD }),
        )
        .await;
    assert_eq!(u.status, 201, "{}", u.body);
    let dev = app.login(&email, PASSWORD).await;
    assert_eq!(app.get("/v1/me", &dev).await.body["role"], "developer");
    let bad = app
        .call(
            Method::POST,
            "/v1/auth/login",
            None,
            Some(json!({ "email": email, "password": "wrong password!!" })),
        )
        .await;
    bad.assert_problem(401, "unauthenticated");
    let id = u.body["id"].as_str().unwrap();
    assert_eq!(
        app.call(
            Method::DELETE,
            &format!("/v1/users/{id}"),
            Some(&org.admin),
            None
        )
        .await
        .status,
        204
    );
    app.get("/v1/me", &dev)
        .await
        .assert_problem(401, "unauthenticated");
    let gone = app
        .call(
            Method::POST,
            "/v1/auth/login",
            None,
            Some(json!({ "email": email, "password": PASSWORD })),
        )
        .await;
    gone.assert_problem(401, "unauthenticated");

    // An expired key can no longer be exchanged, and its tokens stop too.
    let (key_id, token) = app.token_with(&org, "viewer", None).await;
    let db = app.db().await;
    sqlx::query("UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = $1")
        .bind(&key_id)
        .execute(&db)
        .await
        .unwrap();
    db.close().await;
    app.get("/v1/me", &token)
        .await
        .assert_problem(401, "unauthenticated");
    let r = app
        .call(
            Method::POST,
            "/v1/auth/token",
            None,
            Some(json!({ "key_id": key_id, "secret": "sk_wrong" })),
        )
        .await;
    r.assert_problem(401, "unauthenticated");
}

#[tokio::test]
async fn api_key_secrets_are_shown_once_and_stored_hashed() {
    let app = spawn_app().await;
    let org = app.new_org("keys").await;
    let created = app
        .post(
            "/v1/api-keys",
            &org.admin,
            json!({ "name": "ci", "role": "viewer" }),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let secret = created.body["secret"].as_str().unwrap();
    let id = created.body["api_key"]["id"].as_str().unwrap();
    let listed = app.get("/v1/api-keys", &org.admin).await;
    assert!(!listed.body.to_string().contains(secret));
    let got = app.get(&format!("/v1/api-keys/{id}"), &org.admin).await;
    assert!(got.body.get("secret").is_none());
    let db = app.db().await;
    let stored: Vec<u8> = sqlx::query_scalar("SELECT secret_sha256 FROM api_keys WHERE id = $1")
        .bind(id)
        .fetch_one(&db)
        .await
        .unwrap();
    db.close().await;
    assert_eq!(stored.len(), 32);
    assert!(!String::from_utf8_lossy(&stored).contains(secret));
    let token = app.exchange(id, secret).await;
    let me = app.get("/v1/me", &token).await;
    assert_eq!(me.body["role"], "viewer");
    assert_eq!(me.body["api_key_id"], id);
    // A viewer cannot mint an org_admin key for itself.
    app.post(
        "/v1/api-keys",
        &token,
        json!({ "name": "up", "role": "org_admin" }),
    )
    .await
    .assert_problem(403, "forbidden");
    app.post(
        "/v1/api-keys",
        &org.admin,
        json!({ "name": "old", "expires_at": "2001-01-01T00:00:00Z" }),
    )
    .await
    .assert_problem(422, "validation_failed");
}

#[tokio::test]
async fn rotated_keys_keep_verifying_their_tokens_and_jwks_lists_both() {
    let app = spawn_app().await;
    let org = app.new_org("rotate").await;
    let before = app
        .call(Method::GET, "/.well-known/jwks.json", None, None)
        .await;
    assert_eq!(before.body["keys"].as_array().unwrap().len(), 1);
    assert_eq!(before.body["keys"][0]["kty"], "OKP");
    assert_eq!(before.body["keys"][0]["alg"], "EdDSA");
    let r = app
        .send(
            app.http
                .post(format!("{}/admin/v1/signing-keys/rotate", app.base))
                .bearer_auth(crate::helpers::ADMIN_TOKEN),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let after = app
        .call(Method::GET, "/.well-known/jwks.json", None, None)
        .await;
    assert_eq!(after.body["keys"].as_array().unwrap().len(), 2);
    assert_eq!(
        app.get("/v1/me", &org.admin).await.status,
        200,
        "a token of the old key still verifies"
    );
    let (_, fresh) = app.token_with(&org, "viewer", None).await;
    let kid = |t: &str| jsonwebtoken::decode_header(t).unwrap().kid.unwrap();
    assert_eq!(kid(&fresh), r.body["kid"].as_str().unwrap());
    assert_ne!(kid(&fresh), kid(&org.admin));
    let r = app
        .send(
            app.http
                .post(format!("{}/admin/v1/signing-keys/rotate", app.base))
                .bearer_auth("wrong-token-wrong-token-wrong"),
        )
        .await;
    r.assert_problem(401, "unauthenticated");
}

#[tokio::test]
async fn bootstrap_is_idempotent_and_each_run_replaces_the_key() {
    let app = spawn_app().await;
    let db = app.db().await;
    use sluice_control_plane::service::organization::bootstrap;
    let first = bootstrap(&db, "dev", "Admin@Example.com").await.unwrap();
    let second = bootstrap(&db, "dev", "admin@example.com").await.unwrap();
    assert!(first.created_user && !second.created_user);
    assert_eq!(first.organization.id, second.organization.id);
    assert_eq!(first.user_id, second.user_id);
    let orgs: i64 = sqlx::query_scalar("SELECT count(*) FROM organizations")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(orgs, 1);
    db.close().await;
    let token = app
        .exchange(second.api_key_id.as_str(), &second.secret)
        .await;
    assert_eq!(app.get("/v1/me", &token).await.body["role"], "org_admin");
    let old = app
        .call(
            Method::POST,
            "/v1/auth/token",
            None,
            Some(json!({ "key_id": first.api_key_id, "secret": first.secret })),
        )
        .await;
    old.assert_problem(401, "unauthenticated");
}

#[tokio::test]
async fn signup_follows_its_switch() {
    let app = spawn_app().await;
    let body = json!({ "organization_name": "self", "email": "founder@example.com", "name": "F", "password": PASSWORD });
    app.call(Method::POST, "/v1/signup", None, Some(body.clone()))
        .await
        .assert_problem(403, "forbidden");
    let open = crate::helpers::spawn_app_with(|c| c.auth.signup_enabled = true).await;
    let r = open
        .call(Method::POST, "/v1/signup", None, Some(body))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let me = open
        .get("/v1/me", r.body["access_token"].as_str().unwrap())
        .await;
    assert_eq!(me.body["role"], "org_admin");
    assert_eq!(me.body["organization"]["name"], "self");
}

#[tokio::test]
async fn tokens_of_a_configured_oidc_issuer_map_to_users_by_email() {
    use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new()).unwrap();
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let jwks = json!({ "keys": [{ "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "kid": "ext-1",
        "x": B64.encode(pair.public_key().as_ref()) }] });
    // The issuer's JWKS endpoint: a real HTTP server on port 0.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let jwks_url = format!("http://{}/jwks", listener.local_addr().unwrap());
    let idp = axum::Router::new().route(
        "/jwks",
        axum::routing::get(move || async move { axum::Json(jwks) }),
    );
    tokio::spawn(async move { axum::serve(listener, idp).await });

    let app = crate::helpers::spawn_app_with(|c| {
        c.auth.oidc = Some(sluice_control_plane::config::OidcConfig {
            issuer: "https://idp.test".into(),
            audience: "sluice".into(),
            jwks_url,
            email_claim: "email".into(),
            require_email_verified: true,
        });
    })
    .await;
    let org = app.new_org("sso").await;
    let sign = |claims: Value| {
        let mut h = Header::new(Algorithm::EdDSA);
        h.kid = Some("ext-1".into());
        jsonwebtoken::encode(&h, &claims, &EncodingKey::from_ed_der(pkcs8.as_ref())).unwrap()
    };
    let base = json!({ "iss": "https://idp.test", "aud": "sluice", "sub": "ext-42", "email": org.email.to_uppercase(), "email_verified": true, "exp": now() + 300 });
    let me = app.get("/v1/me", &sign(base.clone())).await;
    assert_eq!(me.status, 200, "{}", me.body);
    assert_eq!(
        me.body["principal"],
        json!({ "kind": "user", "id": org.admin_user })
    );
    assert_eq!(me.body["organization"]["id"], org.id);
    assert_eq!(me.body["role"], "org_admin");

    let mut wrong_aud = base.clone();
    wrong_aud["aud"] = json!("someone-else");
    let mut stranger = base.clone();
    stranger["email"] = json!("nobody@example.com");
    let mut expired = base.clone();
    expired["exp"] = json!(now() - 3600);
    let mut unverified = base.clone();
    unverified["email_verified"] = json!(false);
    let mut no_verified_claim = base.clone();
    no_verified_claim
        .as_object_mut()
        .unwrap()
        .remove("email_verified");
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some("ext-1".into());
    let hmac = jsonwebtoken::encode(
        &hs,
        &base,
        &EncodingKey::from_secret(pair.public_key().as_ref()),
    )
    .unwrap();
    for (what, token) in [
        ("wrong audience", sign(wrong_aud)),
        ("unknown email", sign(stranger)),
        ("expired", sign(expired)),
        ("email not verified", sign(unverified)),
        ("no email_verified claim", sign(no_verified_claim)),
        ("HMAC with the public key", hmac),
    ] {
        let r = app.get("/v1/me", &token).await;
        assert_eq!(r.status, 401, "{what}: {}", r.body);
        r.assert_problem(401, "unauthenticated");
    }
}

#[tokio::test]
async fn a_role_change_ends_the_users_tokens_and_the_next_login_has_the_new_role() {
    let app = spawn_app().await;
    let org = app.new_org("demote").await;
    let email = format!("{}@example.com", sluice_test_support::unique_name("dev"));
    let u = app
        .post(
            "/v1/users",
            &org.admin,
            json!({ "email": email, "name": "Dev", "role": "developer", "password": PASSWORD }),
        )
        .await;
    let id = u.body["id"].as_str().unwrap();
    let dev = app.login(&email, PASSWORD).await;
    // A user may rename themselves but not change their role.
    let own = app
        .call(
            Method::PATCH,
            &format!("/v1/users/{id}"),
            Some(&dev),
            Some(json!({ "name": "Deva" })),
        )
        .await;
    assert_eq!(own.status, 200, "{}", own.body);
    app.call(
        Method::PATCH,
        &format!("/v1/users/{id}"),
        Some(&dev),
        Some(json!({ "role": "org_admin" })),
    )
    .await
    .assert_problem(403, "forbidden");
    let demoted = app
        .call(
            Method::PATCH,
            &format!("/v1/users/{id}"),
            Some(&org.admin),
            Some(json!({ "role": "viewer" })),
        )
        .await;
    assert_eq!(demoted.body["role"], "viewer");
    app.get("/v1/me", &dev)
        .await
        .assert_problem(401, "unauthenticated");
    let again = app.login(&email, PASSWORD).await;
    assert_eq!(app.get("/v1/me", &again).await.body["role"], "viewer");
}

#[tokio::test]
async fn a_demoted_users_api_keys_lose_the_roles_the_user_no_longer_holds() {
    let app = spawn_app().await;
    let org = app.new_org("demote-keys").await;
    let email = format!("{}@example.com", sluice_test_support::unique_name("dev"));
    let u = app
        .post(
            "/v1/users",
            &org.admin,
            json!({ "email": email, "name": "Dev", "role": "developer", "password": PASSWORD }),
        )
        .await;
    assert_eq!(u.status, 201, "{}", u.body);
    let id = u.body["id"].as_str().unwrap();
    let dev = app.login(&email, PASSWORD).await;
    let mint = |role: &'static str| {
        app.post(
            "/v1/api-keys",
            &dev,
            json!({ "name": format!("{role}-key"), "role": role }),
        )
    };
    let dev_key = mint("developer").await;
    assert_eq!(dev_key.status, 201, "{}", dev_key.body);
    let viewer_key = mint("viewer").await;
    assert_eq!(viewer_key.status, 201, "{}", viewer_key.body);
    let secret_of = |r: &crate::helpers::Res| {
        (
            r.body["api_key"]["id"].as_str().unwrap().to_owned(),
            r.body["secret"].as_str().unwrap().to_owned(),
        )
    };
    let (dev_key_id, dev_secret) = secret_of(&dev_key);
    let (viewer_key_id, viewer_secret) = secret_of(&viewer_key);
    let dev_token = app.exchange(&dev_key_id, &dev_secret).await;
    let viewer_token = app.exchange(&viewer_key_id, &viewer_secret).await;
    assert_eq!(
        app.get("/v1/me", &dev_token).await.body["role"],
        "developer"
    );

    let demoted = app
        .call(
            Method::PATCH,
            &format!("/v1/users/{id}"),
            Some(&org.admin),
            Some(json!({ "role": "viewer" })),
        )
        .await;
    assert_eq!(demoted.status, 200, "{}", demoted.body);
    // The developer key would keep developer rights for a viewer: its tokens end
    // at once and it cannot be exchanged again.
    app.get("/v1/me", &dev_token)
        .await
        .assert_problem(401, "unauthenticated");
    app.call(
        Method::POST,
        "/v1/auth/token",
        None,
        Some(json!({ "key_id": dev_key_id, "secret": dev_secret })),
    )
    .await
    .assert_problem(401, "unauthenticated");
    // A viewer key is still within what a viewer holds.
    assert_eq!(
        app.get("/v1/me", &viewer_token).await.body["role"],
        "viewer"
    );
    // Promoted back, the developer key works again (it was never revoked).
    let version = demoted.body["version"].as_i64().unwrap();
    let promoted = app
        .send(
            app.http
                .patch(format!("{}/v1/users/{id}", app.base))
                .bearer_auth(&org.admin)
                .header("if-match", format!("\"{version}\""))
                .json(&json!({ "role": "developer" })),
        )
        .await;
    assert_eq!(promoted.status, 200, "{}", promoted.body);
    let again = app.exchange(&dev_key_id, &dev_secret).await;
    assert_eq!(app.get("/v1/me", &again).await.body["role"], "developer");
}

#[tokio::test]
async fn an_idempotent_key_creation_never_stores_or_replays_the_secret() {
    let app = spawn_app().await;
    let org = app.new_org("idem-secret").await;
    let mint = || {
        app.send(
            app.http
                .post(format!("{}/v1/api-keys", app.base))
                .bearer_auth(&org.admin)
                .header("idempotency-key", "mint-1")
                .json(&json!({ "name": "ci", "role": "viewer" })),
        )
    };
    let created = mint().await;
    assert_eq!(created.status, 201, "{}", created.body);
    let secret = created.body["secret"].as_str().unwrap().to_owned();
    let id = created.body["api_key"]["id"].as_str().unwrap().to_owned();
    let db = app.db().await;
    let stored: Vec<u8> = sqlx::query_scalar(
        "SELECT response_body FROM idempotency_keys WHERE key = 'mint-1' AND org_id = $1",
    )
    .bind(&org.id)
    .fetch_one(&db)
    .await
    .unwrap();
    db.close().await;
    assert!(
        !String::from_utf8_lossy(&stored).contains(&secret),
        "the secret is stored in the clear with the idempotency record"
    );
    let retry = mint().await;
    retry.assert_problem(409, "idempotency_secret_not_replayed");
    assert_eq!(retry.headers.get("idempotent-replayed").unwrap(), "true");
    assert!(!retry.body.to_string().contains(&secret));
    assert!(retry.body["detail"].as_str().unwrap().contains(&id));
    // Still one key, and the secret of the first response works.
    let token = app.exchange(&id, &secret).await;
    assert_eq!(app.get("/v1/me", &token).await.body["api_key_id"], id);
}

#[tokio::test]
async fn a_token_that_verified_before_is_refused_once_it_expires() {
    let app = crate::helpers::spawn_app_with(|c| c.auth.token_ttl_s = 1).await;
    let org = app.new_org("short").await;
    let exp = claims_of(&org.admin)["exp"].as_i64().unwrap();
    // Verified once, so later uses of the same token hit the verified-token cache.
    assert_eq!(app.get("/v1/me", &org.admin).await.status, 200);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let refused = loop {
        let r = app.get("/v1/me", &org.admin).await;
        if r.status != 200 {
            break r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the token still works 30 s after it expired"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    refused.assert_problem(401, "unauthenticated");
    assert!(now() > exp, "refused at {} before its exp {exp}", now());
}

#[tokio::test]
async fn a_key_cannot_mint_a_key_that_outlives_it() {
    let app = spawn_app().await;
    let org = app.new_org("expiry").await;
    let (key_id, admin_key_token) = app.token_with(&org, "org_admin", None).await;
    let limit = chrono::Utc::now() + chrono::Duration::hours(1);
    let db = app.db().await;
    sqlx::query("UPDATE api_keys SET expires_at = $2 WHERE id = $1")
        .bind(&key_id)
        .bind(limit)
        .execute(&db)
        .await
        .unwrap();
    db.close().await;
    let later = (limit + chrono::Duration::hours(1)).to_rfc3339();
    for body in [
        json!({ "name": "forever" }),
        json!({ "name": "later", "expires_at": later }),
    ] {
        let r = app.post("/v1/api-keys", &admin_key_token, body).await;
        r.assert_problem(422, "validation_failed");
        assert_eq!(r.body["errors"][0]["field"], "expires_at", "{}", r.body);
    }
    let sooner = (limit - chrono::Duration::minutes(5)).to_rfc3339();
    let ok = app
        .post(
            "/v1/api-keys",
            &admin_key_token,
            json!({ "name": "sooner", "expires_at": sooner }),
        )
        .await;
    assert_eq!(ok.status, 201, "{}", ok.body);
    // A console login has no expiry of its own to pass on.
    let r = app
        .post("/v1/api-keys", &org.admin, json!({ "name": "console" }))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
}
