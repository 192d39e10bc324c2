//! Bearer-token authentication and role checks. Tokens are looked up by their id and
//! compared by hash in constant time; the secret itself is never stored or logged.

use super::HubState;
use super::error::ApiError;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use provisioning::token::ApiToken;
use shared_proto::store::{Object, Role, StoreKind};
use std::sync::Arc;

/// The caller, once its token checked out.
#[derive(Debug, Clone)]
pub struct Caller {
    pub token_id: String,
    pub role: Role,
}

impl Caller {
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.role >= role {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!("this needs the {role} role; the token has {}", self.role)))
        }
    }
}

impl FromRequestParts<Arc<HubState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<HubState>) -> Result<Self, Self::Rejection> {
        let header = parts.headers.get(axum::http::header::AUTHORIZATION).ok_or_else(|| {
            ApiError::Unauthorized("missing bearer token: pass --token or set FLOTILLA_TOKEN".into())
        })?;
        let value =
            header.to_str().map_err(|_| ApiError::Unauthorized("malformed authorization header".into()))?;
        let secret = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(|| ApiError::Unauthorized("authorization must be `Bearer <token>`".into()))?;
        let token =
            ApiToken::parse(secret.trim()).map_err(|_| ApiError::Unauthorized("invalid token".into()))?;
        let record = state.store.get_local(StoreKind::ApiToken, token.id()).map_err(ApiError::from)?;
        match record {
            Some(Object::ApiToken(r)) if token.verify(&r) => Ok(Caller { token_id: r.id, role: r.role }),
            _ => Err(ApiError::Unauthorized("invalid token".into())),
        }
    }
}
