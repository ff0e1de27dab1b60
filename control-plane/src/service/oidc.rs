//! Tokens of an external OpenID Connect issuer (`auth.oidc`): verified against
//! the issuer's JWKS (fetched, cached, refetched on an unknown `kid`), then
//! mapped to a user of this server by their email claim. The user's
//! organization and role come from our database, never from the token.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use base64::Engine;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use sluice_api_types::{OrgId, PrincipalRef, UserId};
use tokio::sync::{Mutex, RwLock};

use super::{Credential, Ctx, Service, ServiceError};
use crate::config::OidcConfig;
use crate::store;

/// An unknown `kid` refetches the JWKS, but not more often than this.
const REFETCH_AT_MOST_EVERY: Duration = Duration::from_secs(10);

pub struct Oidc {
    cfg: OidcConfig,
    http: reqwest::Client,
    jwks: RwLock<Option<(JwkSet, Instant)>>,
    fetching: Mutex<()>,
}

impl Oidc {
    pub fn new(cfg: OidcConfig) -> anyhow::Result<Oidc> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .context("build the HTTP client of the OIDC JWKS")?;
        Ok(Oidc {
            cfg,
            http,
            jwks: RwLock::new(None),
            fetching: Mutex::new(()),
        })
    }

    /// Whether the token says it comes from the configured issuer (unverified: only routes it).
    pub fn is_issuer_of(&self, token: &str) -> bool {
        token
            .split('.')
            .nth(1)
            .and_then(|p| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(p)
                    .ok()
            })
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|c| c["iss"].as_str() == Some(self.cfg.issuer.as_str()))
    }

    async fn key(&self, kid: &str) -> Result<Option<(DecodingKey, Algorithm)>, ServiceError> {
        let find = |set: &JwkSet| {
            set.find(kid).and_then(|jwk| {
                let alg = match jwk.common.key_algorithm {
                    Some(jsonwebtoken::jwk::KeyAlgorithm::ES256) => Algorithm::ES256,
                    Some(jsonwebtoken::jwk::KeyAlgorithm::ES384) => Algorithm::ES384,
                    Some(jsonwebtoken::jwk::KeyAlgorithm::EdDSA) => Algorithm::EdDSA,
                    Some(jsonwebtoken::jwk::KeyAlgorithm::RS384) => Algorithm::RS384,
                    Some(jsonwebtoken::jwk::KeyAlgorithm::RS512) => Algorithm::RS512,
                    _ => match &jwk.algorithm {
                        jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => {
                            Algorithm::ES256
                        }
                        jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
                        _ => Algorithm::RS256,
                    },
                };
                // Symmetric keys never verify: a JWKS is public.
                if matches!(
                    jwk.algorithm,
                    jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_)
                ) {
                    return None;
                }
                DecodingKey::from_jwk(jwk).ok().map(|k| (k, alg))
            })
        };
        if let Some((set, _)) = &*self.jwks.read().await
            && let Some(k) = find(set)
        {
            return Ok(Some(k));
        }
        let _one = self.fetching.lock().await;
        let stale = self
            .jwks
            .read()
            .await
            .as_ref()
            .is_none_or(|(_, at)| at.elapsed() >= REFETCH_AT_MOST_EVERY);
        if stale {
            let set: JwkSet = self
                .http
                .get(&self.cfg.jwks_url)
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .with_context(|| format!("fetch the OIDC JWKS from {}", self.cfg.jwks_url))?
                .json()
                .await
                .with_context(|| format!("parse the OIDC JWKS from {}", self.cfg.jwks_url))?;
            *self.jwks.write().await = Some((set, Instant::now()));
        }
        Ok(self
            .jwks
            .read()
            .await
            .as_ref()
            .and_then(|(set, _)| find(set)))
    }

    /// Verifies the external token and returns its email claim.
    pub async fn verify(&self, token: &str) -> Result<String, ServiceError> {
        let unauth = |m: &str| ServiceError::Unauthenticated(m.to_owned());
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| unauth("the bearer token is not a JWT"))?;
        let kid = header.kid.ok_or_else(|| unauth("the token has no kid"))?;
        let (key, alg) = self
            .key(&kid)
            .await?
            .ok_or_else(|| unauth("the token's kid names no key of the configured OIDC issuer"))?;
        if header.alg != alg {
            return Err(unauth("the token's algorithm does not match its key"));
        }
        let mut v = Validation::new(alg);
        v.set_issuer(&[&self.cfg.issuer]);
        v.set_audience(&[&self.cfg.audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        v.leeway = 5;
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &key, &v)
            .map_err(|e| unauth(&format!("the OIDC token is not valid: {e}")))?;
        if self.cfg.require_email_verified {
            // Some issuers send the claim as a string.
            let verified = match &data.claims["email_verified"] {
                serde_json::Value::Bool(b) => *b,
                serde_json::Value::String(s) => s == "true",
                _ => false,
            };
            if !verified {
                return Err(unauth(
                    "the OIDC token's email is not verified (email_verified is not true)",
                ));
            }
        }
        data.claims[self.cfg.email_claim.as_str()]
            .as_str()
            .map(str::to_ascii_lowercase)
            .ok_or_else(|| {
                unauth(&format!(
                    "the OIDC token has no '{}' claim",
                    self.cfg.email_claim
                ))
            })
    }
}

/// The context of a request made with an external OIDC token: the user with
/// that email, in their organization, with their role.
pub async fn authenticate(
    svc: &Service,
    oidc: &Oidc,
    token: &str,
    request_id: Option<String>,
) -> Result<Ctx, ServiceError> {
    let email = oidc.verify(token).await?;
    let mut conn = svc.db.acquire().await?;
    let user = store::user::find_by_email(&mut conn, &email)
        .await?
        .ok_or_else(|| {
            ServiceError::Unauthenticated(format!("no user of this server has the email {email}"))
        })?;
    let id: UserId = user
        .id
        .parse()
        .map_err(|e| anyhow::anyhow!("user id: {e}"))?;
    let org_id: OrgId = user
        .org_id
        .parse()
        .map_err(|e| anyhow::anyhow!("user org: {e}"))?;
    Ok(Ctx {
        org_id,
        principal: PrincipalRef::User(id.clone()),
        role: user.role()?,
        api_key_id: None,
        pool_scope: None,
        request_id,
        credential: Credential::Login(id),
    })
}
