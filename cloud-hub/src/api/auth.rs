//! Bearer-token authentication, expiry, role and site-scope checks. Tokens are looked
//! up by their id and compared by hash in constant time; the secret itself is never
//! stored or logged. A revoked token is a deleted record: the next request fails.

use super::HubState;
use super::error::ApiError;
use super::scope::Scope;
use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::request::Parts;
use provisioning::token::ApiToken;
use shared_proto::store::{Object, Role, StoreKind};
use std::sync::Arc;

/// The caller, once its token checked out.
#[derive(Debug, Clone)]
pub struct Caller {
    pub token_id: String,
    pub role: Role,
    pub scope: Scope,
}

impl Caller {
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.role >= role {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!("this needs the {role} role; the token has {}", self.role)))
        }
    }

    /// Refuses a token scoped to sites or namespaces: for what is fleet-wide (images,
    /// API tokens, backups).
    pub fn require_unscoped(&self, what: &str) -> Result<(), ApiError> {
        match self.scope.is_all() {
            true => Ok(()),
            false => Err(ApiError::Forbidden(format!(
                "{what} is fleet-wide; this token is scoped to {}",
                self.scope.describe()
            ))),
        }
    }

    /// Refuses to show `o` outside the token's sites and namespaces.
    pub fn check_sees(&self, o: &Object) -> Result<(), ApiError> {
        match self.scope.sees(o) {
            true => Ok(()),
            false => Err(self.outside(o)),
        }
    }

    /// Refuses to change `o` outside the token's sites and namespaces.
    pub fn check_may_change(&self, o: &Object) -> Result<(), ApiError> {
        match self.scope.may_change(o) {
            true => Ok(()),
            false => Err(self.outside(o)),
        }
    }

    fn outside(&self, o: &Object) -> ApiError {
        ApiError::Forbidden(format!("{} is outside this token's {}", o.key(), self.scope.describe()))
    }
}

impl FromRequestParts<Arc<HubState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<HubState>) -> Result<Self, Self::Rejection> {
        // The audit layer checked this request's token already: once is enough.
        if let Some(caller) = parts.extensions.get::<Caller>() {
            return Ok(caller.clone());
        }
        authenticate(state, &parts.headers)
    }
}

/// The caller a request's bearer token names, if it checks out and has not expired.
pub fn authenticate(state: &HubState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let header = headers.get(axum::http::header::AUTHORIZATION).ok_or_else(|| {
        ApiError::Unauthorized("missing bearer token: pass --token or set FLOTILLA_TOKEN".into())
    })?;
    let value =
        header.to_str().map_err(|_| ApiError::Unauthorized("malformed authorization header".into()))?;
    let secret = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or_else(|| ApiError::Unauthorized("authorization must be `Bearer <token>`".into()))?;
    let token = ApiToken::parse(secret.trim()).map_err(|_| ApiError::Unauthorized("invalid token".into()))?;
    let record = state.store.get_local(StoreKind::ApiToken, token.id()).map_err(ApiError::from)?;
    match record {
        Some(Object::ApiToken(r)) if token.verify(&r) => {
            if let Some(expired) = r.expires_at.filter(|e| state.clock.now() >= *e) {
                return Err(ApiError::Unauthorized(format!(
                    "token {} expired at {}; ask an admin for a new one",
                    r.id,
                    expired.to_rfc3339()
                )));
            }
            Ok(Caller { token_id: r.id, role: r.role, scope: Scope::of(&r.sites, &r.namespaces) })
        }
        _ => Err(ApiError::Unauthorized("invalid token".into())),
    }
}
