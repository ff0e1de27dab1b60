//! Tokens and credentials: the Ed25519 key ring (rotation, JWKS), JWT issuance
//! from an API key or a console login, verification of every bearer token, and
//! password / secret hashing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use aws_lc_rs::rand::SecureRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sluice_api_types::{ApiKeyId, OrgId, PoolId, PrincipalRef, Role, TokenResponse};
use sqlx::PgPool;
use tokio::sync::{Mutex, RwLock};

use super::{Credential, Ctx, Service, ServiceError};
use crate::config::AuthConfig;
use crate::store;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The claims of the control plane's access tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    /// `usr_…` or `sa_…`.
    pub sub: String,
    pub org: String,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
    pub jti: String,
    /// The API key the token was exchanged for (absent for console logins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The role granted when the token was issued; every transaction re-checks
    /// it against the database, so a changed role ends the token at once.
    pub role: Role,
    /// The compute pool a pool-scoped API key is limited to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
}

struct VerifyingKey {
    key: DecodingKey,
    public_raw: Vec<u8>,
}

struct Keys {
    /// kid and key of the key that signs new tokens, and when it was made.
    active: Option<(String, EncodingKey, chrono::DateTime<chrono::Utc>)>,
    verifying: HashMap<String, VerifyingKey>,
    loaded_at: Instant,
}

/// The signing keys, shared by every replica through the `signing_keys` table.
pub struct KeyRing {
    db: PgPool,
    cfg: AuthConfig,
    keys: RwLock<Keys>,
    /// One rotation or reload at a time in this process.
    refresh: Mutex<()>,
    /// Tokens whose signature and claims verified, keyed by the token's full
    /// text (so only the very same bytes hit): an Ed25519 verification costs
    /// more than the rest of an authenticated read. Only what cannot change
    /// is cached; expiry is checked again on every hit, and revocation,
    /// deletion and role changes are checked by the database on every request.
    verified: std::sync::Mutex<HashMap<String, Claims>>,
}

/// Entries of [`KeyRing::verified`]; when full, expired ones go, then all.
const VERIFIED_CACHE_MAX: usize = 10_000;
/// Clock skew tolerated on `exp` and `nbf`, in seconds.
const LEEWAY_S: u64 = 5;

/// An unknown `kid` reloads the keys from the database (another replica may
/// have rotated), but not more often than this.
const RELOAD_AT_MOST_EVERY: Duration = Duration::from_secs(1);

impl KeyRing {
    /// Loads the keys, making the first (or a fresh) one if none is usable. A
    /// database without the schema yet (migrations pending) is not an error:
    /// the keys load on first use instead, and `/readyz` reports the schema.
    pub async fn load(db: PgPool, cfg: AuthConfig) -> Arc<KeyRing> {
        let ring = Arc::new(KeyRing {
            db,
            cfg,
            keys: RwLock::new(Keys {
                active: None,
                verifying: HashMap::new(),
                loaded_at: Instant::now(),
            }),
            refresh: Mutex::new(()),
            verified: std::sync::Mutex::new(HashMap::new()),
        });
        if let Err(e) = ring.rotate_if_due().await {
            tracing::warn!(error = %format!("{e:#}"), "token signing keys not loaded yet; retrying on first use");
        }
        ring
    }

    fn verify_window_s(&self) -> i64 {
        // A retired key verifies until the last token it signed has expired.
        self.cfg.token_ttl_s as i64 + 60
    }

    async fn reload(&self) -> anyhow::Result<()> {
        let mut conn = self.db.acquire().await.context("load signing keys")?;
        let rows = store::signing_key::live(&mut conn, self.verify_window_s()).await?;
        let mut active = None;
        let mut verifying = HashMap::new();
        for r in rows {
            if r.retired_at.is_none() {
                active = Some((
                    r.kid.clone(),
                    EncodingKey::from_ed_der(&r.private_der),
                    r.created_at,
                ));
            }
            verifying.insert(
                r.kid.clone(),
                VerifyingKey {
                    key: DecodingKey::from_ed_der(&r.public_raw),
                    public_raw: r.public_raw,
                },
            );
        }
        *self.keys.write().await = Keys {
            active,
            verifying,
            loaded_at: Instant::now(),
        };
        Ok(())
    }

    /// Makes a new active key when there is none or it is older than the rotation period.
    pub async fn rotate_if_due(&self) -> anyhow::Result<()> {
        let _one = self.refresh.lock().await;
        let mut tx = self.db.begin().await.context("begin key rotation")?;
        let age = store::signing_key::active_age_s(&mut tx).await?;
        if age.is_none_or(|a| a >= self.cfg.signing_key_rotate_after_s as i64) {
            let (kid, der, public) = new_key_pair()?;
            store::signing_key::rotate(&mut tx, &kid, &der, &public).await?;
            tracing::info!(kid, "made a new token signing key");
        }
        tx.commit().await.context("commit key rotation")?;
        self.reload().await
    }

    /// Retires the active key now and makes a new one (the platform operator's rotation).
    pub async fn rotate_now(&self) -> anyhow::Result<String> {
        let _one = self.refresh.lock().await;
        let mut tx = self.db.begin().await.context("begin key rotation")?;
        let (kid, der, public) = new_key_pair()?;
        store::signing_key::rotate(&mut tx, &kid, &der, &public).await?;
        tx.commit().await.context("commit key rotation")?;
        tracing::info!(kid, "rotated the token signing key");
        self.reload().await?;
        Ok(kid)
    }

    /// Signs an access token for the principal.
    pub async fn issue(
        &self,
        org: &OrgId,
        subject: &str,
        key: Option<&ApiKeyId>,
        role: Role,
        pool: Option<&PoolId>,
    ) -> Result<TokenResponse, ServiceError> {
        let due = {
            let keys = self.keys.read().await;
            keys.active.as_ref().is_none_or(|(_, _, created)| {
                (chrono::Utc::now() - *created).num_seconds()
                    >= self.cfg.signing_key_rotate_after_s as i64
            })
        };
        if due {
            self.rotate_if_due().await?;
        }
        let keys = self.keys.read().await;
        let (kid, enc, _) = keys
            .active
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("no active signing key after rotation"))?;
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            iss: self.cfg.issuer.clone(),
            aud: self.cfg.audience.clone(),
            sub: subject.to_owned(),
            org: org.to_string(),
            iat: now,
            nbf: now,
            exp: now + self.cfg.token_ttl_s,
            jti: uuid::Uuid::new_v4().simple().to_string(),
            key: key.map(ToString::to_string),
            role,
            pool: pool.map(ToString::to_string),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, enc).context("sign the access token")?;
        Ok(TokenResponse {
            access_token: token,
            token_type: "Bearer".into(),
            expires_in: self.cfg.token_ttl_s,
        })
    }

    /// Checks signature, algorithm, `kid`, issuer, audience and time claims.
    pub async fn verify(&self, token: &str) -> Result<Claims, ServiceError> {
        let now = jsonwebtoken::get_current_timestamp();
        if let Some(claims) = self.verified_cache().get(token)
            && claims.exp.saturating_add(LEEWAY_S) >= now
        {
            return Ok(claims.clone());
        }
        let claims = self.verify_uncached(token).await?;
        let mut cache = self.verified_cache();
        if cache.len() >= VERIFIED_CACHE_MAX {
            cache.retain(|_, c| c.exp.saturating_add(LEEWAY_S) >= now);
            if cache.len() >= VERIFIED_CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(token.to_owned(), claims.clone());
        Ok(claims)
    }

    fn verified_cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, Claims>> {
        // A panic while holding the lock cannot leave a half-written entry
        // (insert and retain are whole operations), so a poisoned map is usable.
        self.verified
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn verify_uncached(&self, token: &str) -> Result<Claims, ServiceError> {
        let unauth = |m: &str| ServiceError::Unauthenticated(m.to_owned());
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| unauth("the bearer token is not a JWT"))?;
        // Only EdDSA: this rejects `none` and an HMAC token keyed with our public key.
        if header.alg != Algorithm::EdDSA {
            return Err(unauth("the token's algorithm is not accepted (EdDSA only)"));
        }
        let kid = header.kid.ok_or_else(|| unauth("the token has no kid"))?;
        let mut key = self.verifying_key(&kid).await;
        if key.is_none() {
            self.reload_if_stale().await?;
            key = self.verifying_key(&kid).await;
        }
        let key = key.ok_or_else(|| unauth("the token's kid names no key of this server"))?;
        let mut v = Validation::new(Algorithm::EdDSA);
        v.set_issuer(&[&self.cfg.issuer]);
        v.set_audience(&[&self.cfg.audience]);
        v.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        v.validate_nbf = true;
        v.leeway = LEEWAY_S;
        jsonwebtoken::decode::<Claims>(token, &key, &v)
            .map(|d| d.claims)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                unauth(match e.kind() {
                    K::ExpiredSignature => "the token has expired",
                    K::ImmatureSignature => "the token is not valid yet",
                    K::InvalidIssuer => "the token's issuer is not accepted",
                    K::InvalidAudience => "the token's audience is not accepted",
                    K::InvalidSignature => "the token's signature does not verify",
                    K::MissingRequiredClaim(_) => "the token lacks a required claim",
                    _ => "the token is not valid",
                })
            })
    }

    async fn verifying_key(&self, kid: &str) -> Option<DecodingKey> {
        self.keys
            .read()
            .await
            .verifying
            .get(kid)
            .map(|k| k.key.clone())
    }

    async fn reload_if_stale(&self) -> anyhow::Result<()> {
        let _one = self.refresh.lock().await;
        if self.keys.read().await.loaded_at.elapsed() >= RELOAD_AT_MOST_EVERY {
            self.reload().await?;
        }
        Ok(())
    }

    /// The public keys that verify tokens now, as a JWKS document.
    pub async fn jwks(&self) -> serde_json::Value {
        if self.keys.read().await.verifying.is_empty()
            && let Err(e) = self.rotate_if_due().await
        {
            tracing::warn!(error = %format!("{e:#}"), "load the token signing keys for the JWKS");
        }
        let keys = self.keys.read().await;
        let mut list: Vec<_> = keys
            .verifying
            .iter()
            .map(|(kid, k)| {
                serde_json::json!({
                    "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig",
                    "kid": kid, "x": B64.encode(&k.public_raw),
                })
            })
            .collect();
        list.sort_by(|a, b| a["kid"].as_str().cmp(&b["kid"].as_str()));
        serde_json::json!({ "keys": list })
    }
}

fn new_key_pair() -> anyhow::Result<(String, Vec<u8>, Vec<u8>)> {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new())
        .map_err(|_| anyhow::anyhow!("generate an Ed25519 key"))?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|_| anyhow::anyhow!("parse the new Ed25519 key"))?;
    let kid = format!("sk_{}", uuid::Uuid::now_v7().simple());
    Ok((
        kid,
        pkcs8.as_ref().to_vec(),
        pair.public_key().as_ref().to_vec(),
    ))
}

/// 32 random bytes, URL-safe base64.
pub fn new_secret() -> anyhow::Result<String> {
    let mut b = [0u8; 32];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| anyhow::anyhow!("read random bytes"))?;
    Ok(format!("sk_{}", B64.encode(b)))
}

pub fn sha256(data: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let mut salt = [0u8; 16];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| anyhow::anyhow!("read random bytes"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("encode salt: {e}"))?;
    Ok(argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("hash password: {e}"))?
        .to_string())
}

/// A real argon2id hash to verify against when the email is unknown.
fn dummy_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| hash_password("not a password of anyone").unwrap_or_default())
}

fn password_matches(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// Minimum password policy.
pub fn check_password(field: &str, password: &str, errors: &mut Vec<sluice_api_types::FieldError>) {
    let n = password.chars().count();
    if !(12..=256).contains(&n) {
        errors.push(sluice_api_types::FieldError::new(
            field,
            "weak_password",
            "password must be 12..=256 characters",
        ));
    }
}

/// Hashing is CPU work of tens of milliseconds: keep it off the async workers.
pub async fn hash_password_blocking(password: String) -> Result<String, ServiceError> {
    Ok(
        tokio::task::spawn_blocking(move || hash_password(&password))
            .await
            .context("password hashing task")??,
    )
}

const BAD_CREDENTIALS: &str = "the key id and secret do not match a live API key";

/// `POST /v1/auth/token`: API key id + secret → access token.
pub async fn exchange_api_key(
    svc: &Service,
    key_id: &str,
    secret: &str,
) -> Result<TokenResponse, ServiceError> {
    let bad = || ServiceError::Unauthenticated(BAD_CREDENTIALS.into());
    let key: ApiKeyId = key_id.parse().map_err(|_| bad())?;
    let mut conn = svc.db.acquire().await?;
    let row = store::api_key::find(&mut conn, &key)
        .await?
        .ok_or_else(bad)?;
    let given = sha256(secret.as_bytes());
    if aws_lc_rs::constant_time::verify_slices_are_equal(&given, &row.secret_sha256).is_err() {
        return Err(bad());
    }
    let org: OrgId = row
        .org_id
        .parse()
        .map_err(|e| anyhow::anyhow!("api key org: {e}"))?;
    let Some((role, pool)) = store::api_key::live_grant(&mut conn, &org, &key).await? else {
        return Err(ServiceError::Unauthenticated(
            "the API key is revoked or expired, or its owner was deleted or no longer holds its role"
                .into(),
        ));
    };
    let owner = row.owner()?;
    let subject = match &owner {
        PrincipalRef::User(u) => u.to_string(),
        PrincipalRef::ServiceAccount(s) => s.to_string(),
    };
    drop(conn);
    svc.keys
        .issue(&org, &subject, Some(&key), role, pool.as_ref())
        .await
}

/// `POST /v1/auth/login`: email + password → access token.
pub async fn login(
    svc: &Service,
    email: &str,
    password: &str,
) -> Result<TokenResponse, ServiceError> {
    let bad = || ServiceError::Unauthenticated("the email and password do not match a user".into());
    let mut conn = svc.db.acquire().await?;
    let user = store::user::find_by_email(&mut conn, &email.to_ascii_lowercase()).await?;
    drop(conn);
    // Without a user the hash still runs, so timing does not tell which emails exist.
    let hash = user.as_ref().map(|u| u.password_hash.clone());
    let pw = password.to_owned();
    let ok = tokio::task::spawn_blocking(move || match hash {
        Some(h) => password_matches(&pw, &h),
        None => {
            let _ = password_matches(&pw, dummy_hash());
            false
        }
    })
    .await
    .context("password check task")?;
    let user = user.filter(|_| ok).ok_or_else(bad)?;
    let org: OrgId = user
        .org_id
        .parse()
        .map_err(|e| anyhow::anyhow!("user org: {e}"))?;
    svc.keys
        .issue(&org, &user.id, None, user.role()?, None)
        .await
}

/// Turns a bearer token into the request's context. Only the signature and
/// claims are checked here; that the key is live, the principal exists and the
/// role is unchanged is checked in the first statement of every transaction the
/// request opens ([`Ctx::begin`]), so revocation and deletion take effect at
/// once without a second round trip per request.
pub fn authenticate(claims: Claims, request_id: Option<String>) -> Result<Ctx, ServiceError> {
    let bad = || {
        ServiceError::Unauthenticated(
            "the token's claims do not name a principal of this server".into(),
        )
    };
    let org_id: OrgId = claims.org.parse().map_err(|_| bad())?;
    let principal = if let Ok(u) = claims.sub.parse() {
        PrincipalRef::User(u)
    } else if let Ok(s) = claims.sub.parse() {
        PrincipalRef::ServiceAccount(s)
    } else {
        return Err(bad());
    };
    let (credential, api_key_id) = match (&claims.key, &principal) {
        (Some(k), _) => {
            let key: ApiKeyId = k.parse().map_err(|_| bad())?;
            (Credential::ApiKey(key.clone()), Some(key))
        }
        (None, PrincipalRef::User(u)) => (Credential::Login(u.clone()), None),
        (None, PrincipalRef::ServiceAccount(_)) => return Err(bad()),
    };
    let pool_scope = claims
        .pool
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(|_| bad())?;
    Ok(Ctx {
        org_id,
        principal,
        role: claims.role,
        api_key_id,
        pool_scope,
        request_id,
        credential,
    })
}

/// Which roles a caller may give an API key it creates for `owner_role`.
pub fn may_grant(caller: Role, owner_role: Role, key_role: Role) -> bool {
    caller == Role::OrgAdmin || key_role == owner_role || key_role == Role::Viewer
}
