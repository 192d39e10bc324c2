//! Enrolment tokens (what a device presents the first time it connects) and API
//! tokens (what operators and tools present to the API). Only hashes are stored; a
//! token's secret is shown once, in the response that creates it.

use super::HubState;
use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use bytes::Bytes;
use provisioning::token::{ApiToken, EnrolmentToken};
use serde::Deserialize;
use serde_json::{Value, json};
use shared_proto::store::{
    ApiTokenRecord, EnrolmentTokenRecord, LabelPolicy, Object, Precondition, Role, StoreCommand, StoreKind,
    StoreOutcome,
};
use shared_proto::validate::{dns_label_problem, label_problem};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The longest an enrolment token may live.
const MAX_TOKEN_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// The body of `POST /api/v1/enrolment-tokens`.
#[derive(Debug, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateEnrolmentToken {
    /// How long the token is valid, e.g. `24h`, `7d`: from 1 s to 365 days. Default 24h.
    /// (Any humantime duration is read; the pattern names the usual forms.)
    #[serde(default)]
    #[schema(
        pattern = "^([1-9][0-9]{0,3}[smh]|[1-9][0-9]?d|[12][0-9]{2}d|3[0-5][0-9]d|36[0-5]d)$",
        example = "24h"
    )]
    pub ttl: Option<String>,
    /// How many devices may enrol with it; unset: any number.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 4294967295u32)]
    pub max_uses: Option<u32>,
    /// Labels every device enrolled with it gets.
    #[serde(default)]
    #[schema(value_type = BTreeMap<String, shared_proto::openapi::LabelValue>)]
    pub labels: BTreeMap<String, String>,
    /// Labels devices may set themselves: `key` (any value), `key=value`, or `*` (any
    /// label). Default: none but the token's own.
    #[serde(default)]
    #[schema(max_items = 64, value_type = Vec<AllowLabelRule>)]
    pub allow_labels: Vec<String>,
    /// The site devices enrolled with it join; a token scoped to sites must name one of
    /// its own (403 otherwise).
    #[serde(default)]
    #[schema(value_type = shared_proto::openapi::DnsLabelOrEmpty)]
    pub site: String,
    #[serde(default)]
    #[schema(max_length = 1024)]
    pub description: String,
}

/// `*`, `key` or `key=value`.
pub struct AllowLabelRule;

impl utoipa::PartialSchema for AllowLabelRule {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some("^(\\*|([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?){0,2}/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?(=([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?)?)$"))
            .into()
    }
}

impl utoipa::ToSchema for AllowLabelRule {}

fn parse_json<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> ApiResult<T> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(T::default());
    }
    super::objects::read_json(body)
}

fn enrolment_json(r: &EnrolmentTokenRecord) -> Value {
    json!({
        "id": r.id,
        "createdAt": r.created_at,
        "expiresAt": r.expires_at,
        "maxUses": r.max_uses,
        "used": r.n_used,
        "labels": r.labels,
        "deviceLabels": match &r.device_labels {
            LabelPolicy::TokenOnly => json!("none"),
            LabelPolicy::Any => json!("any"),
            LabelPolicy::Keys(keys) => json!(keys),
        },
        "site": r.site,
        "description": r.description,
    })
}

pub async fn create_enrolment(
    State(state): State<Arc<HubState>>,
    caller: Caller,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    caller.require(Role::Operator)?;
    let req: CreateEnrolmentToken = parse_json(&body)?;
    let ttl = parse_ttl("ttl", req.ttl.as_deref(), Duration::from_secs(24 * 3600), (MAX_TOKEN_TTL, "365d"))?;
    if caller.scope.namespaces.is_some() {
        return Err(ApiError::Forbidden(format!(
            "devices serve every namespace; this token is scoped to {}",
            caller.scope.describe()
        )));
    }
    if !caller.scope.has_site(&req.site) {
        return Err(ApiError::Forbidden(format!(
            "site {:?} is outside this token's {}: enrolment tokens of a scoped token must name one of its sites",
            req.site,
            caller.scope.describe()
        )));
    }
    if req.max_uses == Some(0) {
        return Err(ApiError::invalid("maxUses", "must be at least 1 (leave it out for unlimited)"));
    }
    for (k, v) in &req.labels {
        if let Some(p) = label_problem(k, v) {
            return Err(ApiError::invalid(&format!("labels[{k:?}]"), p));
        }
    }
    if req.allow_labels.len() > 64 {
        return Err(ApiError::invalid("allowLabels", "at most 64 rules"));
    }
    let device_labels = LabelPolicy::from_rules(req.allow_labels.iter().map(String::as_str))
        .map_err(|p| ApiError::invalid("allowLabels", p))?;
    if !req.site.is_empty()
        && let Some(p) = dns_label_problem(&req.site)
    {
        return Err(ApiError::invalid("site", p));
    }
    if req.description.len() > 1024 {
        return Err(ApiError::invalid("description", "must be at most 1024 bytes"));
    }
    let (token, secret_sha256) = EnrolmentToken::generate(state.pki.fleet().fingerprint_bytes())
        .map_err(|e| ApiError::Internal(format!("generating a token: {e}")))?;
    let now = state.clock.now();
    let record = EnrolmentTokenRecord {
        id: token.id().to_string(),
        secret_sha256,
        created_at: now,
        expires_at: now.saturating_add(ttl),
        max_uses: req.max_uses,
        n_used: 0,
        labels: req.labels,
        site: req.site,
        description: req.description,
        device_labels,
    };
    let body = enrolment_json(&record);
    match state
        .store
        .write(StoreCommand::put(Object::EnrolmentToken(record), Precondition::MustNotExist))
        .await?
    {
        StoreOutcome::Applied { .. } => {}
        StoreOutcome::Conflict { .. } | StoreOutcome::Each(_) => {
            return Err(ApiError::Conflict("token id collision; retry".into()));
        }
    }
    let mut body = body;
    body["token"] = Value::String(token.to_token_string());
    Ok((StatusCode::CREATED, Json(body)))
}

pub async fn list_enrolment(State(state): State<Arc<HubState>>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require(Role::Operator)?;
    let items: Vec<Value> = state
        .store
        .list(StoreKind::EnrolmentToken)
        .await?
        .iter()
        .filter_map(|o| match o {
            Object::EnrolmentToken(r) if caller.scope.token_in_scope(r) => Some(enrolment_json(r)),
            _ => None,
        })
        .collect();
    Ok(Json(json!({ "items": items })))
}

async fn delete_record(state: &HubState, kind: StoreKind, id: &str) -> ApiResult<Json<Value>> {
    let cmd = StoreCommand::Delete { kind, name: id.to_string(), precondition: Precondition::MustExist };
    match state.store.write(cmd).await? {
        StoreOutcome::Applied { .. } => Ok(Json(json!({ "deleted": id }))),
        StoreOutcome::Conflict { .. } | StoreOutcome::Each(_) => {
            Err(ApiError::NotFound(format!("token {id:?} not found")))
        }
    }
}

pub async fn delete_enrolment(
    State(state): State<Arc<HubState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Operator)?;
    if !caller.scope.is_all() {
        match state.store.get(StoreKind::EnrolmentToken, &id).await? {
            Some(o) => caller.check_may_change(&o)?,
            None => return Err(ApiError::NotFound(format!("token {id:?} not found"))),
        }
    }
    delete_record(&state, StoreKind::EnrolmentToken, &id).await
}

/// The body of `POST /api/v1/api-tokens`.
#[derive(Debug, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateApiToken {
    /// `viewer` (the default), `operator` or `admin`.
    #[serde(default)]
    #[schema(pattern = "^(viewer|operator|admin)$")]
    pub role: Option<String>,
    #[serde(default)]
    #[schema(max_length = 1024)]
    pub description: String,
    /// How long the token is valid, e.g. `30d`: from 1 s to 1825 days. Default 90 days.
    /// (Any humantime duration is read; the pattern names the usual forms.)
    #[serde(default)]
    #[schema(
        pattern = "^([1-9][0-9]{0,3}[smh]|[1-9][0-9]{0,2}d|1[0-7][0-9]{2}d|18[01][0-9]d|182[0-5]d)$",
        example = "30d"
    )]
    pub ttl: Option<String>,
    /// The sites the token may see and change; empty: every site. Viewer and operator
    /// tokens only: an admin token with sites is 422.
    #[serde(default)]
    #[schema(max_items = 256, value_type = Vec<shared_proto::openapi::DnsLabel>)]
    pub sites: Vec<String>,
    /// The namespaces whose apps, configs and secrets the token may see and change;
    /// empty: every namespace. A token with namespaces changes no fleet object (sites,
    /// devices, images, enrolment tokens). Viewer and operator tokens only: an admin
    /// token with namespaces is 422.
    #[serde(default)]
    #[schema(max_items = 256, value_type = Vec<shared_proto::openapi::DnsLabel>)]
    pub namespaces: Vec<String>,
}

/// How long an API token lives unless asked otherwise.
const DEFAULT_API_TOKEN_TTL: Duration = Duration::from_secs(90 * 24 * 3600);
const MAX_API_TOKEN_TTL: Duration = Duration::from_secs(5 * 365 * 24 * 3600);

fn parse_ttl(
    field: &str,
    ttl: Option<&str>,
    default: Duration,
    (max, max_text): (Duration, &str),
) -> ApiResult<Duration> {
    let ttl = match ttl {
        None | Some("") => default,
        Some(s) => humantime::parse_duration(s)
            .map_err(|e| ApiError::invalid(field, format!("{s:?} is not a duration like 24h or 7d: {e}")))?,
    };
    if ttl.is_zero() || ttl > max {
        return Err(ApiError::invalid(field, format!("must be between 1s and {max_text}")));
    }
    Ok(ttl)
}

fn api_token_json(r: &ApiTokenRecord) -> Value {
    json!({
        "id": r.id,
        "role": r.role.to_string(),
        "createdAt": r.created_at,
        "expiresAt": r.expires_at,
        "sites": r.sites,
        "namespaces": r.namespaces,
        "description": r.description,
    })
}

/// Creates an API token record; returns the token string (shown once) and the record.
pub fn new_api_token(
    role: Role,
    description: String,
    now: shared_proto::Timestamp,
) -> ApiResult<(String, ApiTokenRecord)> {
    let (token, secret_sha256) =
        ApiToken::generate().map_err(|e| ApiError::Internal(format!("generating a token: {e}")))?;
    let record = ApiTokenRecord {
        id: token.id().to_string(),
        secret_sha256,
        role,
        created_at: now,
        description,
        expires_at: None,
        sites: vec![],
        namespaces: vec![],
    };
    Ok((token.to_token_string(), record))
}

/// Checks the sites (or namespaces) an API token is limited to: DNS labels, at most 256,
/// and none for an admin token, which reaches everything.
fn check_scope_list(field: &str, what: &str, names: &[String], role: Role) -> ApiResult<()> {
    if !names.is_empty() && role == Role::Admin {
        return Err(ApiError::invalid(
            field,
            format!("admin tokens reach every {what}; scope a viewer or operator token"),
        ));
    }
    if names.len() > 256 {
        return Err(ApiError::invalid(field, format!("at most 256 {field}")));
    }
    for (i, name) in names.iter().enumerate() {
        if let Some(p) = dns_label_problem(name) {
            return Err(ApiError::invalid(&format!("{field}[{i}]"), p));
        }
    }
    Ok(())
}

pub async fn create_api(
    State(state): State<Arc<HubState>>,
    caller: Caller,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    caller.require(Role::Admin)?;
    let req: CreateApiToken = parse_json(&body)?;
    let role = match req.role.as_deref() {
        None => Role::Viewer,
        Some(r) => {
            Role::parse(r).ok_or_else(|| ApiError::invalid("role", "must be viewer, operator or admin"))?
        }
    };
    if req.description.len() > 1024 {
        return Err(ApiError::invalid("description", "must be at most 1024 bytes"));
    }
    let ttl = parse_ttl("ttl", req.ttl.as_deref(), DEFAULT_API_TOKEN_TTL, (MAX_API_TOKEN_TTL, "1825d"))?;
    check_scope_list("sites", "site", &req.sites, role)?;
    check_scope_list("namespaces", "namespace", &req.namespaces, role)?;
    let now = state.clock.now();
    let (secret, mut record) = new_api_token(role, req.description, now)?;
    record.expires_at = Some(now.saturating_add(ttl));
    record.sites = req.sites;
    record.namespaces = req.namespaces;
    let mut body = api_token_json(&record);
    body["token"] = Value::String(secret);
    match state.store.write(StoreCommand::put(Object::ApiToken(record), Precondition::MustNotExist)).await? {
        StoreOutcome::Applied { .. } => Ok((StatusCode::CREATED, Json(body))),
        StoreOutcome::Conflict { .. } | StoreOutcome::Each(_) => {
            Err(ApiError::Conflict("token id collision; retry".into()))
        }
    }
}

pub async fn list_api(State(state): State<Arc<HubState>>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require(Role::Admin)?;
    let items: Vec<Value> = state
        .store
        .list(StoreKind::ApiToken)
        .await?
        .iter()
        .filter_map(|o| match o {
            Object::ApiToken(r) => Some(api_token_json(r)),
            _ => None,
        })
        .collect();
    Ok(Json(json!({ "items": items })))
}

pub async fn delete_api(
    State(state): State<Arc<HubState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require(Role::Admin)?;
    if id == caller.token_id {
        // The request is well-formed; the token's state forbids it (409, not 400).
        return Err(ApiError::Conflict(
            "refusing to delete the token this request uses: revoke it with another admin token".into(),
        ));
    }
    delete_record(&state, StoreKind::ApiToken, &id).await
}
