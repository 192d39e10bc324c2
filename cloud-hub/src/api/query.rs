//! What a list or watch asks for (`GET /api/v1/<kind>?…`), parsed and checked before any
//! store access, and the pure rules that follow from it: which objects match, what a watcher
//! sees of a change, and the opaque `continue` token of a paged list. Pure: no I/O.
//!
//! Parameters, as in Kubernetes:
//! - `labelSelector`: `app=pos,tier!=db,env in (a,b),!canary` ([`LabelSelector::parse`]);
//! - `fieldSelector`: `field=value`, `field==value`, `field!=value`, comma-separated, on the
//!   fields [`FIELDS`] names per kind;
//! - `namespace`: apps, configs and secrets of one namespace (without it, of every
//!   namespace the token reaches);
//! - `site`: a site's own object, its devices, and the apps placed there (those whose
//!   placement names it or names no site);
//! - `limit` (1..=[`MAX_LIST_LIMIT`]; without it the whole list) and `continue` (the token the
//!   previous page returned; same kind, same filters);
//! - `watch=true` with `sinceRevision=N` (changes after revision `N`) or a `Last-Event-ID`
//!   header; without either, changes from now on.

use super::error::{ApiError, ApiResult};
use base64::Engine;
use serde::{Deserialize, Serialize};
use shared_proto::selector::LabelSelector;
use shared_proto::store::Object;
use shared_proto::{Kind, ObjectMeta};
use std::sync::Arc;

/// Largest page a list returns; a bigger `limit` is refused.
pub const MAX_LIST_LIMIT: usize = 1000;
/// Most terms in one `fieldSelector`.
pub const MAX_FIELD_TERMS: usize = 16;
/// Longest `continue` token read.
const MAX_CONTINUE_LEN: usize = 1024;

/// The fields `fieldSelector` can test, per kind (every kind also has `metadata.name`).
pub const FIELDS: &[(Kind, &[&str])] = &[
    (Kind::Site, &["metadata.name"]),
    (Kind::Device, &["metadata.name", "spec.site", "status.phase"]),
    (Kind::App, &["metadata.name", "metadata.namespace", "status.phase"]),
    (Kind::Image, &["metadata.name"]),
    (Kind::Config, &["metadata.name", "metadata.namespace"]),
    (Kind::Secret, &["metadata.name", "metadata.namespace"]),
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRequirement {
    pub field: String,
    pub equal: bool,
    pub value: String,
}

/// Where a list page starts: the list's revision and the last name of the previous page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContinueToken {
    /// Format of the token, so a later hub can refuse an older shape clearly.
    pub v: u8,
    pub kind: String,
    pub revision: u64,
    pub after: String,
}

impl ContinueToken {
    pub fn new(kind: Kind, revision: u64, after: String) -> ContinueToken {
        ContinueToken { v: 1, kind: kind.as_str().to_string(), revision, after }
    }

    /// URL-safe, opaque to clients.
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).expect("a continue token serialises");
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    pub fn decode(text: &str, kind: Kind) -> ApiResult<ContinueToken> {
        let bad = || {
            ApiError::invalid("continue", "not a continue token this hub gave out: list again from the start")
        };
        if text.len() > MAX_CONTINUE_LEN {
            return Err(bad());
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text).map_err(|_| bad())?;
        let token: ContinueToken = serde_json::from_slice(&bytes).map_err(|_| bad())?;
        if token.v != 1 {
            return Err(bad());
        }
        if token.kind != kind.as_str() {
            return Err(ApiError::invalid(
                "continue",
                format!("the token continues a list of {}, not of {}", token.kind, kind.plural()),
            ));
        }
        Ok(token)
    }
}

/// A parsed list or watch request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListQuery {
    pub labels: LabelSelector,
    pub fields: Vec<FieldRequirement>,
    pub site: Option<String>,
    pub namespace: Option<String>,
    pub limit: Option<usize>,
    pub continue_from: Option<ContinueToken>,
    pub watch: bool,
    pub since_revision: Option<u64>,
}

fn parse_bool(param: &str, v: &str) -> ApiResult<bool> {
    match v {
        "true" | "1" | "" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(ApiError::invalid(param, format!("{v:?} is not true or false"))),
    }
}

impl ListQuery {
    /// Reads the query string of a list of `kind`; every problem names its parameter.
    pub fn parse(kind: Kind, raw: Option<&str>) -> ApiResult<ListQuery> {
        let mut q = ListQuery::default();
        for (k, v) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
            match k.as_ref() {
                "labelSelector" => {
                    q.labels =
                        LabelSelector::parse(&v).map_err(|e| ApiError::invalid("labelSelector", e.0))?
                }
                "fieldSelector" => q.fields = parse_fields(kind, &v)?,
                "namespace" => q.namespace = namespace_param(kind, &v)?,
                "site" => {
                    if !matches!(kind, Kind::Site | Kind::Device | Kind::App) {
                        return Err(ApiError::invalid(
                            "site",
                            format!(
                                "{} belong to no site: site= applies to sites, devices and apps",
                                kind.plural()
                            ),
                        ));
                    }
                    q.site = Some(v.into_owned());
                }
                "limit" => {
                    let n: usize = v.parse().map_err(|_| {
                        ApiError::invalid(
                            "limit",
                            format!("{v:?} is not a number from 1 to {MAX_LIST_LIMIT}"),
                        )
                    })?;
                    if !(1..=MAX_LIST_LIMIT).contains(&n) {
                        return Err(ApiError::invalid(
                            "limit",
                            format!(
                                "{n} is out of range: ask for 1 to {MAX_LIST_LIMIT} and follow `continue`"
                            ),
                        ));
                    }
                    q.limit = Some(n);
                }
                "continue" => q.continue_from = Some(ContinueToken::decode(&v, kind)?),
                "watch" => q.watch = parse_bool("watch", &v)?,
                "sinceRevision" => {
                    q.since_revision = Some(v.parse().map_err(|_| {
                        ApiError::invalid(
                            "sinceRevision",
                            format!("{v:?} is not a revision (a whole number)"),
                        )
                    })?)
                }
                // Unknown parameters are ignored, as Kubernetes does.
                _ => {}
            }
        }
        if q.watch && q.continue_from.is_some() {
            return Err(ApiError::invalid(
                "continue",
                "a watch does not page: drop continue, use sinceRevision",
            ));
        }
        if !q.watch && q.since_revision.is_some() {
            return Err(ApiError::invalid(
                "sinceRevision",
                "only a watch starts at a revision (add watch=true); a list reads the current state",
            ));
        }
        Ok(q)
    }

    /// Whether `o` passes the label, field and site filters.
    pub fn matches(&self, o: &Object) -> bool {
        let Some(meta) = o.metadata() else { return false };
        self.labels.matches(&meta.labels)
            && self
                .fields
                .iter()
                .all(|f| (field_value(o, meta, &f.field).as_deref() == Some(&f.value)) == f.equal)
            && self.site.as_ref().is_none_or(|site| in_site(o, site))
            && self.namespace.as_ref().is_none_or(|ns| &meta.namespace == ns)
    }
}

/// Reads a `namespace` query parameter for `kind`: a DNS label for apps, configs and
/// secrets (empty: none given), refused for the fleet's kinds.
pub fn namespace_param(kind: Kind, value: &str) -> ApiResult<Option<String>> {
    if value.is_empty() {
        return Ok(None);
    }
    match shared_proto::validate::namespace_problem(kind, value) {
        Some(p) => Err(ApiError::invalid("namespace", p)),
        None => Ok(Some(value.to_string())),
    }
}

/// The `namespace` parameter of a request's query string, read as [`namespace_param`].
pub fn namespace_of_query(kind: Kind, raw: Option<&str>) -> ApiResult<Option<String>> {
    let mut namespace = None;
    for (k, v) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        if k == "namespace" {
            namespace = namespace_param(kind, &v)?;
        }
    }
    Ok(namespace)
}

fn parse_fields(kind: Kind, text: &str) -> ApiResult<Vec<FieldRequirement>> {
    let known = FIELDS.iter().find(|(k, _)| *k == kind).map_or(&[][..], |(_, f)| *f);
    let mut out = Vec::new();
    for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        if out.len() == MAX_FIELD_TERMS {
            return Err(ApiError::invalid("fieldSelector", format!("more than {MAX_FIELD_TERMS} terms")));
        }
        let (field, equal, value) = if let Some((f, v)) = term.split_once("!=") {
            (f, false, v)
        } else if let Some((f, v)) = term.split_once("==") {
            (f, true, v)
        } else if let Some((f, v)) = term.split_once('=') {
            (f, true, v)
        } else {
            return Err(ApiError::invalid(
                "fieldSelector",
                format!("{term:?} is not field=value, field==value or field!=value"),
            ));
        };
        let field = field.trim();
        if !known.contains(&field) {
            return Err(ApiError::invalid(
                "fieldSelector",
                format!("{} cannot be selected on {field:?}: use {}", kind.plural(), known.join(", ")),
            ));
        }
        out.push(FieldRequirement { field: field.to_string(), equal, value: value.trim().to_string() });
    }
    Ok(out)
}

fn field_value(o: &Object, meta: &ObjectMeta, field: &str) -> Option<String> {
    let text = |v: serde_json::Result<serde_json::Value>| v.ok()?.as_str().map(str::to_string);
    match (o, field) {
        (_, "metadata.name") => Some(meta.name.clone()),
        (_, "metadata.namespace") => Some(meta.namespace.clone()),
        (Object::Device(d), "spec.site") => Some(d.spec.site.clone()),
        (Object::Device(d), "status.phase") => text(serde_json::to_value(d.status.phase)),
        (Object::App(a), "status.phase") => text(serde_json::to_value(a.status.phase)),
        _ => None,
    }
}

fn in_site(o: &Object, site: &str) -> bool {
    match o {
        Object::Site(s) => s.metadata.name == site,
        Object::Device(d) => d.spec.site == site,
        Object::App(a) => {
            let sites = &a.spec.placement.sites;
            sites.is_empty() || sites.iter().any(|s| s == site)
        }
        _ => false,
    }
}

/// What a watch event says happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// What a watcher who sees only objects passing `sees` is told of one change: an object that
/// starts to pass is ADDED, one that stops passing (or is deleted) is DELETED with its last
/// state, as a Kubernetes watch with a selector does. `None`: nothing it sees changed.
pub fn watcher_view(
    object: Option<&Arc<Object>>,
    previous: Option<&Arc<Object>>,
    sees: impl Fn(&Object) -> bool,
) -> Option<(EventType, Arc<Object>)> {
    let now = object.filter(|o| sees(o));
    let before = previous.filter(|o| sees(o));
    match (before, now) {
        (None, None) => None,
        (None, Some(o)) => Some((EventType::Added, o.clone())),
        (Some(_), Some(o)) => Some((EventType::Modified, o.clone())),
        (Some(p), None) => Some((EventType::Deleted, object.unwrap_or(p).clone())),
    }
}

/// Where a watch resumes: every revision up to `done` was delivered, and at `partial.0` the
/// first `partial.1` events too. Event ids are `R` for the last event of revision `R`, and
/// `R:i` for its event `i` when more of the same revision follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchCursor {
    pub done: u64,
    pub partial: Option<(u64, usize)>,
}

impl WatchCursor {
    pub fn after(revision: u64) -> WatchCursor {
        WatchCursor { done: revision, partial: None }
    }

    /// Reads a `Last-Event-ID` this hub gave out.
    pub fn parse_event_id(id: &str) -> ApiResult<WatchCursor> {
        let bad = || ApiError::invalid("Last-Event-ID", format!("{id:?} is not an event id of this watch"));
        match id.trim().split_once(':') {
            None => Ok(WatchCursor::after(id.trim().parse().map_err(|_| bad())?)),
            Some((r, i)) => {
                let r: u64 = r.parse().map_err(|_| bad())?;
                let i: usize = i.parse().map_err(|_| bad())?;
                if r == 0 {
                    return Err(bad());
                }
                Ok(WatchCursor { done: r - 1, partial: Some((r, i + 1)) })
            }
        }
    }

    pub fn event_id(revision: u64, idx: usize, n_at_revision: usize) -> String {
        if idx + 1 == n_at_revision { revision.to_string() } else { format!("{revision}:{idx}") }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use shared_proto::{App, AppSpec, Device, DeviceSpec, Placement, Site, SiteSpec};

    fn app(name: &str, labels: &[(&str, &str)], sites: &[&str]) -> Object {
        let mut meta = ObjectMeta::named(name);
        meta.labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Object::App(App::new(
            meta,
            AppSpec {
                placement: Placement {
                    sites: sites.iter().map(|s| s.to_string()).collect(),
                    ..Default::default()
                },
                ..Default::default()
            },
        ))
    }

    fn device(name: &str, site: &str) -> Object {
        Object::Device(Device::new(
            ObjectMeta::named(name),
            DeviceSpec { site: site.into(), ..Default::default() },
        ))
    }

    fn field_error(r: ApiResult<ListQuery>) -> (String, String) {
        match r {
            Err(ApiError::Invalid(e)) => (e.0[0].field.clone(), e.0[0].message.clone()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn filters_by_labels_fields_and_site() {
        let q = ListQuery::parse(Kind::App, Some("labelSelector=app%3Dpos%2C!canary&site=s1")).unwrap();
        assert!(q.matches(&app("a", &[("app", "pos")], &["s1"])));
        assert!(q.matches(&app("a", &[("app", "pos")], &[])), "fleet-wide apps run at every site");
        assert!(!q.matches(&app("a", &[("app", "pos")], &["s2"])));
        assert!(!q.matches(&app("a", &[("app", "pos"), ("canary", "")], &["s1"])));
        let q = ListQuery::parse(Kind::Device, Some("fieldSelector=spec.site%3Ds1,status.phase!%3DOnline"))
            .unwrap();
        assert!(q.matches(&device("d", "s1")), "a new device is Pending");
        assert!(!q.matches(&device("d", "s2")));
        let q = ListQuery::parse(Kind::Site, Some("fieldSelector=metadata.name==x&site=x")).unwrap();
        assert!(q.matches(&Object::Site(Site::new(ObjectMeta::named("x"), SiteSpec::default()))));
    }

    #[test]
    fn bad_parameters_are_refused_by_name() {
        for (kind, query, field, says) in [
            (Kind::App, "labelSelector=app%20in%20(a", "labelSelector", "expected"),
            (
                Kind::App,
                "fieldSelector=spec.site%3Dx",
                "fieldSelector",
                "metadata.name, metadata.namespace, status.phase",
            ),
            (Kind::App, "namespace=Pos", "namespace", "lower-case"),
            (Kind::Device, "namespace=pos", "namespace", "no namespace"),
            (Kind::App, "fieldSelector=status.phase", "fieldSelector", "field=value"),
            (Kind::Image, "site=s", "site", "no site"),
            (Kind::App, "limit=0", "limit", "1 to 1000"),
            (Kind::App, "limit=1001", "limit", "1 to 1000"),
            (Kind::App, "limit=ten", "limit", "not a number"),
            (Kind::App, "continue=garbage!", "continue", "list again"),
            (Kind::App, "sinceRevision=5", "sinceRevision", "watch=true"),
            (Kind::App, "watch=true&sinceRevision=-1", "sinceRevision", "whole number"),
            (Kind::App, "watch=maybe", "watch", "true or false"),
        ] {
            let (f, message) = field_error(ListQuery::parse(kind, Some(query)));
            assert_eq!(f, field, "{query}");
            assert!(message.contains(says), "{query}: {message}");
        }
        let token = ContinueToken::new(Kind::Site, 4, "a".into()).encode();
        let (f, message) = field_error(ListQuery::parse(Kind::App, Some(&format!("continue={token}"))));
        assert_eq!((f.as_str(), message.contains("of Site")), ("continue", true), "{message}");
        let (f, _) = field_error(ListQuery::parse(Kind::App, Some(&format!("watch=1&continue={token}"))));
        assert_eq!(f, "continue");
    }

    #[test]
    fn a_watcher_sees_objects_enter_and_leave_its_filter() {
        let sees = |o: &Object| o.metadata().is_some_and(|m| m.labels.contains_key("pos"));
        let pos = Arc::new(app("a", &[("pos", "")], &[]));
        let other = Arc::new(app("a", &[], &[]));
        let view = |now: Option<&Arc<Object>>, before: Option<&Arc<Object>>| {
            watcher_view(now, before, sees).map(|(t, o)| (t, o.metadata().unwrap().labels.len()))
        };
        assert_eq!(view(Some(&pos), None), Some((EventType::Added, 1)));
        assert_eq!(view(Some(&pos), Some(&other)), Some((EventType::Added, 1)));
        assert_eq!(view(Some(&pos), Some(&pos)), Some((EventType::Modified, 1)));
        assert_eq!(view(Some(&other), Some(&pos)), Some((EventType::Deleted, 0)), "its new state, unseen");
        assert_eq!(view(None, Some(&pos)), Some((EventType::Deleted, 1)), "its last state");
        assert_eq!(view(Some(&other), None), None);
        assert_eq!(view(None, Some(&other)), None);
    }

    #[test]
    fn event_ids_resume_inside_a_revision() {
        assert_eq!(WatchCursor::event_id(7, 0, 1), "7");
        assert_eq!(WatchCursor::event_id(7, 0, 3), "7:0");
        assert_eq!(WatchCursor::event_id(7, 2, 3), "7");
        assert_eq!(WatchCursor::parse_event_id("7").unwrap(), WatchCursor::after(7));
        assert_eq!(
            WatchCursor::parse_event_id("7:1").unwrap(),
            WatchCursor { done: 6, partial: Some((7, 2)) }
        );
        for bad in ["", "x", "7:", "0:0", "-1", "7:1:2"] {
            assert!(WatchCursor::parse_event_id(bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn continue_tokens_round_trip(revision in any::<u64>(), after in "\\PC{0,40}") {
            let token = ContinueToken::new(Kind::Device, revision, after);
            let text = token.encode();
            prop_assert!(text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            prop_assert_eq!(ContinueToken::decode(&text, Kind::Device).unwrap(), token);
        }

        #[test]
        fn any_query_string_is_parsed_or_refused_by_name(raw in "[a-zA-Z=&%!,() .0-9]{0,60}") {
            match ListQuery::parse(Kind::Device, Some(&raw)) {
                Ok(_) => {}
                Err(ApiError::Invalid(e)) => prop_assert!(!e.0[0].field.is_empty()),
                Err(other) => prop_assert!(false, "{other:?}"),
            }
        }
    }
}
