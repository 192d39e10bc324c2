//! The OpenAPI 3.1 description of the API, served at `/api/v1/openapi.json` and kept in
//! the repository as `docs/openapi.json` (a test fails when the two drift; regenerate
//! with `UPDATE_OPENAPI=1 cargo test -p cloud-hub --lib openapi`).
//!
//! The schemas are generated from the types the handlers parse and serve, with utoipa
//! (the maintained, widely used derive for OpenAPI in Rust, emitting 3.1): the
//! resource types in `shared-proto` derive `ToSchema` behind its `openapi` feature,
//! which only the hub turns on (the agent links no schema macros), and carry the
//! validator's rules as schema constraints (`shared_proto::openapi` holds the string
//! shapes). The routes are generic over the kinds (`/api/v1/{kind}`), so each path is
//! written here per kind, naming those schemas; every status a route can answer is
//! listed, and every error is an RFC 9457 problem (`error::Problem`).
//!
//! What JSON Schema cannot say (cross-field rules: names unique within an app, a
//! `hostPort` that must equal `containerPort` with `network: Host`, exactly one probe
//! action, requests within limits, the body's `metadata.name` equal to the path's) is
//! written in the descriptions and answered with 422 naming the field.

use super::error::Problem;
use super::tokens::{CreateApiToken, CreateEnrolmentToken};
use serde_json::{Map, Value, json};
use shared_proto::validate::FieldError;
use shared_proto::{App, Config, Device, Image, Kind, Secret, Site};
use utoipa::OpenApi;

/// The component schemas derived from the handlers' types.
#[derive(OpenApi)]
#[openapi(components(schemas(
    Site,
    Device,
    App,
    Image,
    Config,
    Secret,
    Problem,
    FieldError,
    CreateEnrolmentToken,
    CreateApiToken,
    shared_proto::Timestamp,
    shared_proto::openapi::DnsLabel,
    shared_proto::openapi::ImageReference,
    shared_proto::openapi::LabelKey,
    shared_proto::openapi::ConfigKey
)))]
struct Schemas;

/// Where the committed copy of the document lives, from the workspace root.
pub const COMMITTED_PATH: &str = "docs/openapi.json";

fn problem_ref(description: &str) -> Value {
    json!({ "description": description, "content": {
        super::error::PROBLEM_JSON: { "schema": { "$ref": "#/components/schemas/Problem" } } } })
}

/// The error answers of a route, by status code, each described.
fn errors(codes: &[u16]) -> Map<String, Value> {
    codes
        .iter()
        .map(|code| {
            let description = match code {
                400 => "The request is malformed: a path or query parameter that does not parse (as UTF-8, or as the type it names)",
                401 => "No token, or the token is invalid, expired or revoked",
                403 => "The token's role or sites do not allow this",
                404 => "No such object",
                408 => "The request (body included) took longer than 30 s",
                409 => "The object changed meanwhile, or its state forbids this: the detail says which",
                410 => "The revision asked for is older than this hub's history: list again",
                413 => "The body is over the limit (1 MiB for JSON)",
                422 => "A field or parameter is invalid: `errors` names each",
                503 => "This hub cannot answer now: it is not the leader (the detail names it) or its store is unavailable; retry",
                _ => "Error",
            };
            (code.to_string(), problem_ref(description))
        })
        .collect()
}

/// `responses` from the success answers and the error codes.
fn responses(ok: Value, codes: &[u16]) -> Value {
    let mut map = ok.as_object().cloned().unwrap_or_default();
    map.extend(errors(codes));
    Value::Object(map)
}

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn json_content(schema: Value) -> Value {
    json!({ "application/json": { "schema": schema } })
}

/// The `{name}` path parameter of `kind`: a DNS label, or an image reference.
fn name_param(kind: Kind) -> Value {
    let schema = match kind {
        Kind::Image => schema_ref("ImageReference"),
        _ => schema_ref("DnsLabel"),
    };
    json!({ "name": "name", "in": "path", "required": true, "schema": schema })
}

/// The `namespace` query parameter of apps, configs and secrets.
fn namespace_param(list: bool) -> Value {
    query(
        "namespace",
        schema_ref("DnsLabel"),
        if list {
            "Only this namespace's; without it, every namespace the token reaches"
        } else {
            "The object's namespace; default `default`"
        },
    )
}

fn device_name() -> Value {
    name_param(Kind::Device)
}

fn query(name: &str, schema: Value, description: &str) -> Value {
    json!({ "name": name, "in": "query", "schema": schema, "description": description })
}

/// The answers every authenticated route shares: the token (401, 403), the 30 s
/// deadline (408) and a hub that cannot serve (503).
const COMMON: &[u16] = &[401, 403, 408, 503];

fn with_common(codes: &[u16]) -> Vec<u16> {
    let mut all: Vec<u16> = COMMON.iter().chain(codes).copied().collect();
    all.sort_unstable();
    all.dedup();
    all
}

fn list_schema(kind: Kind) -> Value {
    json!({ "type": "object", "required": ["apiVersion", "kind", "metadata", "revision", "items"],
        "properties": {
            "apiVersion": { "const": shared_proto::API_VERSION },
            "kind": { "const": format!("{}List", kind.as_str()) },
            "metadata": { "type": "object", "required": ["revision"], "properties": {
                "revision": { "type": "integer", "minimum": 0, "description": "The revision the whole list (every page) is read at" },
                "continue": { "type": "string", "description": "Present when more items follow: pass it as `continue`" } } },
            "revision": { "type": "integer", "minimum": 0, "description": "Same as metadata.revision" },
            "items": { "type": "array", "items": schema_ref(kind.as_str()) } } })
}

/// The Kubernetes selector grammar `LabelSelector::parse` reads, as a pattern.
fn label_selector_pattern() -> String {
    let unanchored = |p: &str| p.trim_start_matches('^').trim_end_matches('$').to_string();
    let key = unanchored(shared_proto::openapi::LABEL_KEY);
    let value = unanchored(shared_proto::openapi::LABEL_VALUE);
    let set_value = "[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?";
    let term =
        format!("(!{key}|{key}((=|==|!=){value}| (in|notin) \\({set_value}(,{set_value}){{0,3}}\\))?)");
    format!("^({term}(,{term}){{0,7}})?$")
}

fn crud(kind: Kind) -> (Value, Value) {
    let plural = kind.plural();
    let item = schema_ref(kind.as_str());
    let fields = super::query::FIELDS.iter().find(|(k, _)| *k == kind).map_or(&[][..], |(_, f)| *f);
    let field_alternatives = fields.iter().map(|f| f.replace('.', "\\.")).collect::<Vec<_>>().join("|");
    let field_term = format!("({field_alternatives})(=|==|!=)[-A-Za-z0-9_.]{{0,63}}");
    let mut parameters = vec![
        query(
            "labelSelector",
            json!({ "type": "string", "maxLength": shared_proto::selector::MAX_SELECTOR_LEN, "pattern": label_selector_pattern() }),
            "Kubernetes label selector: `app=pos,tier!=db,env in (a,b),zone notin (x),gpu,!canary`, keys and values by the label rules (at most 64 requirements; the pattern shows up to 8, and no spaces but around in and notin); a malformed one is 422",
        ),
        query(
            "fieldSelector",
            json!({ "type": "string",
                "pattern": format!("^({field_term}(,{field_term}){{0,{}}})?$", super::query::MAX_FIELD_TERMS - 1) }),
            &format!(
                "`field=value`, `field==value` or `field!=value`, comma-separated (at most {}), on: {}",
                super::query::MAX_FIELD_TERMS,
                fields.join(", ")
            ),
        ),
        query(
            "limit",
            json!({ "type": "integer", "minimum": 1, "maximum": super::query::MAX_LIST_LIMIT }),
            "Most items in this page; `metadata.continue` then names the next. Without it, the whole list",
        ),
        query(
            "continue",
            json!({ "type": "string", "maxLength": 1024, "pattern": "^[-_A-Za-z0-9]+$" }),
            "The previous page's `metadata.continue` (opaque): the next page of the same list, read at the same revision. 422 for a token this hub did not give out; 410 when this hub no longer keeps that revision: list again",
        ),
        query(
            "watch",
            json!({ "type": "boolean" }),
            "Stream the changes (Server-Sent Events) instead of listing; the filters apply. Not with `continue`",
        ),
        query(
            "sinceRevision",
            json!({ "type": "integer", "minimum": 0 }),
            "With watch only (422 without): the changes after this revision (a list's `metadata.revision`); default: from now on. 410 when this hub no longer keeps it",
        ),
        json!({ "name": "Last-Event-ID", "in": "header", "schema": { "type": "string", "pattern": "^[0-9]+(:[0-9]+)?$" },
            "description": "With watch: resume after this event (the last `id:` received); wins over sinceRevision" }),
    ];
    if kind.is_namespaced() {
        parameters.push(namespace_param(true));
    }
    if matches!(kind, Kind::Site | Kind::Device | Kind::App) {
        parameters.push(query(
            "site",
            json!({ "type": "string" }),
            "Only the site's own object, its devices, and the apps placed there (or placed fleet-wide)",
        ));
    }
    let collection = json!({
        "get": {
            "operationId": format!("list_{plural}"),
            "summary": format!("List or watch {plural}"),
            "description": "A list is read at one revision (`metadata.revision`); watching from it (`watch=true&sinceRevision=`) misses nothing and repeats nothing. Watch events: `id:` the revision (`R:i` when more events of revision R follow), `event:` ADDED, MODIFIED, DELETED, BOOKMARK (nothing for you up to that revision) or ERROR (last, with a problem body; status 410 means list again); comments every 15 s. An object that stops matching the filters is DELETED, one that starts is ADDED. A client that reads slower than the hub changes is dropped with a 410 ERROR. Lists are linearizable (the leader answers; 503 elsewhere); watches are served by any hub.",
            "parameters": parameters,
            "responses": responses(json!({
                "200": { "description": format!("The {plural} that match, or their changes"), "content": {
                    "application/json": { "schema": list_schema(kind) },
                    "text/event-stream": { "schema": { "type": "string" } } } } }),
                &with_common(&[410, 422])),
        }
    });
    let mut one_parameters = vec![name_param(kind)];
    if kind.is_namespaced() {
        one_parameters.push(namespace_param(false));
    }
    // A malformed namespace is 422, as in lists.
    let get_codes: &[u16] = if kind.is_namespaced() { &[400, 404, 422] } else { &[400, 404] };
    let delete_codes: &[u16] = if kind.is_namespaced() { &[400, 404, 409, 422] } else { &[400, 404, 409] };
    let mut one = json!({
        "parameters": one_parameters,
        "get": { "operationId": format!("get_{}", kind.as_str().to_lowercase()), "summary": format!("Get one {kind}"),
            "responses": responses(json!({ "200": { "description": kind.as_str(), "content": json_content(item.clone()) } }),
                &with_common(get_codes)) },
        "delete": { "operationId": format!("delete_{}", kind.as_str().to_lowercase()), "summary": format!("Delete one {kind} (operator)"),
            "description": match kind {
                Kind::Config | Kind::Secret => "409 while an app uses it",
                Kind::Image => "Images are fleet-wide: a token scoped to sites gets 403",
                _ => "",
            },
            "responses": responses(json!({ "200": { "description": "Deleted", "content": json_content(json!({
                "type": "object", "required": ["deleted", "revision"], "properties": {
                    "deleted": { "type": "object", "required": ["kind", "name"], "properties": {
                        "kind": { "const": kind.as_str() }, "name": { "type": "string" }, "namespace": { "type": "string" } } },
                    "revision": { "type": "integer", "minimum": 0 } } })) } }),
                &with_common(delete_codes)) },
    });
    if kind != Kind::Image {
        one["put"] = json!({
            "operationId": format!("apply_{}", kind.as_str().to_lowercase()),
            "summary": format!("Create or update one {kind} (declarative apply; operator)"),
            "description": format!("The body is the whole object; `metadata.name` must be the path's name. Sending metadata.revision makes the write conditional (409 when it changed). Response header `flotilla-apply-result`: created, configured or unchanged.{}",
                match kind {
                    Kind::Device => " Devices are created by enrolment: applying an unknown one is 404.",
                    Kind::App => " Rules across fields, answered with 422 naming the field: container and volume names unique within the app (init containers included); with `network: Host` a hostPort equals its containerPort, with `None` there are none, and no port is published twice; exactly one action per probe or hook and one source per volume; volumeMounts name volumes of the app; requests within limits, a memory limit of at least 4Mi, a CPU limit above 0; successThreshold 1 for liveness and startup probes; init containers take no probes or hooks; `networkPolicy` only with `network: Isolated`; an app is not in its own affinity, nor in affinity and antiAffinity alike; env sets `value` or `valueFrom`, not both.",
                    Kind::Config | Kind::Secret => " At most 64 keys in data and binaryData together, no key in both, and 256 KiB of data in all; binaryData values are base64. A Secret's values are never returned.",
                    _ => "",
                }),
            "requestBody": { "required": true, "content": json_content(item.clone()) },
            "responses": responses(json!({
                "200": { "description": "Updated, or unchanged", "content": json_content(item.clone()) },
                "201": { "description": "Created", "content": json_content(item) } }),
                &with_common(&[400, 404, 409, 413, 422])),
        });
    }
    (collection, one)
}

fn token_list_schema(item: Value) -> Value {
    json!({ "type": "object", "required": ["items"], "properties": { "items": { "type": "array", "items": item } } })
}

fn enrolment_token_schema() -> Value {
    json!({ "type": "object", "required": ["id", "createdAt", "expiresAt", "labels", "deviceLabels", "site", "description"],
        "properties": {
            "id": { "type": "string" }, "createdAt": schema_ref("Timestamp"), "expiresAt": schema_ref("Timestamp"),
            "maxUses": { "type": ["integer", "null"], "minimum": 1 }, "used": { "type": "integer", "minimum": 0 },
            "labels": { "type": "object", "additionalProperties": { "type": "string" } },
            "deviceLabels": { "oneOf": [{ "enum": ["none", "any"] }, { "type": "array", "items": { "type": "string" } }] },
            "site": { "type": "string" }, "description": { "type": "string" },
            "token": { "type": "string", "description": "The secret, only in the answer that creates it" } } })
}

fn api_token_schema() -> Value {
    json!({ "type": "object", "required": ["id", "role", "createdAt", "sites", "namespaces", "description"],
        "properties": {
            "id": { "type": "string" }, "role": { "enum": ["viewer", "operator", "admin"] },
            "createdAt": schema_ref("Timestamp"), "expiresAt": { "oneOf": [{ "type": "null" }, schema_ref("Timestamp")] },
            "sites": { "type": "array", "items": { "type": "string" } },
            "namespaces": { "type": "array", "items": { "type": "string" } }, "description": { "type": "string" },
            "token": { "type": "string", "description": "The secret, only in the answer that creates it" } } })
}

fn ca_status_schema() -> Value {
    json!({ "type": "object", "required": ["fleet", "previous", "devices", "notSeenSinceStaged", "onPreviousCa", "trustedPem"],
        "properties": {
            "fleet": { "type": "object", "properties": { "fingerprint": { "type": "string" } } },
            "next": { "type": ["object", "null"], "properties": { "fingerprint": { "type": "string" }, "stagedAt": { "type": ["string", "null"] } } },
            "previous": { "type": "array", "items": { "type": "string" } },
            "changedAt": { "type": ["string", "null"] },
            "devices": { "type": "integer", "minimum": 0 },
            "notSeenSinceStaged": { "type": "array", "items": { "type": "string" } },
            "onPreviousCa": { "type": "array", "items": { "type": "string" } },
            "trustedPem": { "type": "string", "description": "Every CA to trust for the hub, PEM" } } })
}

fn paths() -> Map<String, Value> {
    let mut paths = Map::new();
    for kind in Kind::ALL {
        let (collection, one) = crud(kind);
        paths.insert(format!("/api/v1/{}", kind.plural()), collection);
        paths.insert(format!("/api/v1/{}/{{name}}", kind.plural()), one);
    }
    paths["/api/v1/images"]["post"] = json!({
        "operationId": "import_image",
        "summary": "Import an OCI image-layout archive (tar, optionally gzip; operator, fleet-wide token)",
        "parameters": [query("name", schema_ref("ImageReference"), "Reference to import as; defaults to the archive's ref name")],
        "requestBody": { "required": true, "content": { "application/x-tar": { "schema": { "type": "string", "format": "binary" } } } },
        "responses": responses(json!({ "201": { "description": "Imported", "content": json_content(schema_ref("Image")) } }),
            &[400, 401, 403, 409, 413, 422, 503]),
    });
    let object_with_device = |summary: &str, op: &str, ok: Value, codes: &[u16]| {
        json!({ "post": { "operationId": op, "summary": summary, "parameters": [device_name()],
            "responses": responses(ok, &with_common(codes)) } })
    };
    let device_ok =
        json!({ "200": { "description": "The device", "content": json_content(schema_ref("Device")) } });
    paths.insert(
        "/api/v1/devices/{name}/manifest".into(),
        json!({ "get": { "operationId": "get_device_manifest", "summary": "The device's desired manifest",
            "parameters": [device_name()],
            "responses": responses(json!({ "200": { "description": "Desired manifest (manifest shape 2)",
                "content": json_content(json!({ "type": "object" })) } }), &with_common(&[400, 404])) } }),
    );
    paths.insert(
        "/api/v1/devices/{name}/usage".into(),
        json!({ "get": { "operationId": "get_device_usage", "summary": "What the device's containers use, as it last reported (memory only, never stored)",
            "parameters": [device_name()],
            "responses": responses(json!({ "200": { "description": "CPU millicores and working-set bytes per container", "content": json_content(json!({
                "type": "object", "required": ["device", "containers"], "properties": {
                    "device": { "type": "string" }, "sampledAt": { "oneOf": [{ "type": "null" }, schema_ref("Timestamp")] },
                    "containers": { "type": "array", "items": { "type": "object", "properties": {
                        "app": { "type": "string" }, "name": { "type": "string" },
                        "cpuMillis": { "type": "integer" }, "memoryBytes": { "type": "integer" } } } } } })) } }),
                &with_common(&[400, 404])) } }),
    );
    paths.insert(
        "/api/v1/devices/{name}/decommission".into(),
        object_with_device(
            "Retire a device: its connections close, its certificates open nothing more, nothing is placed on it; the record stays (operator)",
            "decommission_device",
            device_ok.clone(),
            &[400, 404, 409],
        ),
    );
    for (verb, summary) in [
        (
            "approve",
            "Let a Quarantined device back in: its next renewal request (with the key it asked with) gets a certificate (operator). 409 unless Quarantined",
        ),
        (
            "reject",
            "Refuse a Quarantined device for good: it is decommissioned (operator). 409 unless Quarantined",
        ),
    ] {
        paths.insert(
            format!("/api/v1/devices/{{name}}/{verb}"),
            object_with_device(summary, &format!("{verb}_device"), device_ok.clone(), &[400, 404, 409]),
        );
    }
    let ca_ok = json!({ "200": { "description": "The fleet CA and its rotation", "content": json_content(ca_status_schema()) } });
    paths.insert(
        "/api/v1/ca".into(),
        json!({ "get": { "operationId": "get_ca", "summary": "The fleet CA and its rotation",
            "responses": responses(ca_ok.clone(), COMMON) } }),
    );
    let force = json!([query(
        "force",
        json!({ "type": "boolean" }),
        "Go ahead although the devices named in the refusal would be cut off"
    )]);
    for (step, summary, parameters) in [
        (
            "rotate",
            "Stage a new fleet CA: trusted, and handed to every device that connects (admin). 409 while one is staged",
            json!([]),
        ),
        (
            "activate",
            "Make the staged CA the fleet CA; devices renew onto it (admin). 409 when none is staged, or while devices have not connected since it was staged (unless forced)",
            force.clone(),
        ),
        (
            "retire",
            "Stop trusting the CAs the fleet CA replaced (admin). 409 when there are none, or while devices hold only their certificates (unless forced)",
            force.clone(),
        ),
    ] {
        paths.insert(
            format!("/api/v1/ca/{step}"),
            json!({ "post": { "operationId": format!("{step}_ca"), "summary": summary, "parameters": parameters,
                "responses": responses(ca_ok.clone(), &with_common(&[400, 409])) } }),
        );
    }
    paths.insert(
        "/api/v1/audit".into(),
        json!({ "get": { "operationId": "list_audit", "summary": "The audit log: every mutating call by a valid token, oldest first (admin)",
            "parameters": [
                query("since", json!({ "type": "string",
                    "pattern": "^([1-9][0-9]{0,3}[smhd]|(19[7-9][0-9]|20[0-9]{2})-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]Z)$" }),
                    "RFC 3339 time, or a duration back from now (1h, 7d); anything else is 422"),
                query("limit", json!({ "type": "integer", "minimum": 1, "maximum": 10000 }), "The newest this many entries (default 1000)")],
            "responses": responses(json!({ "200": { "description": "Entries", "content": json_content(json!({
                "type": "object", "required": ["items", "truncated"], "properties": {
                    "truncated": { "type": "boolean" },
                    "items": { "type": "array", "items": { "type": "object", "properties": {
                        "id": { "type": "string" }, "at": schema_ref("Timestamp"), "tokenId": { "type": "string" },
                        "role": { "type": "string" }, "remote": { "type": "string" }, "method": { "type": "string" },
                        "path": { "type": "string" }, "status": { "type": "integer" } } } } } })) } }),
                &with_common(&[400, 422])) } }),
    );
    paths.insert(
        "/api/v1/backup".into(),
        json!({ "get": { "operationId": "download_backup", "summary": "A backup of the whole store at one revision (admin, fleet-wide token; audited). Holds the fleet CA's private key; Secrets only sealed, not the hub key (secrets.key)",
            "responses": responses(json!({ "200": { "description": "The backup file (`flotilla backup create` writes it, `flotilla backup restore` reads it); header x-flotilla-backup-revision",
                "content": { "application/octet-stream": { "schema": { "type": "string", "format": "binary" } } } } }),
                &[401, 403, 503]) } }),
    );
    paths.insert(
        "/api/v1/apps/{name}/placement".into(),
        json!({ "get": { "operationId": "get_app_placement", "summary": "The scheduler's verdict on every device for this app: placed, or why not",
            "parameters": [name_param(Kind::App), namespace_param(false)],
            "responses": responses(json!({ "200": { "description": "Verdicts", "content": json_content(json!({
                "type": "object", "required": ["app", "namespace", "placedDevices", "devices"], "properties": {
                    "app": { "type": "string" }, "namespace": { "type": "string" }, "placedDevices": { "type": "integer", "minimum": 0 },
                    "devices": { "type": "array", "items": { "type": "object", "properties": {
                        "device": { "type": "string" }, "placed": { "type": "boolean" },
                        "selected": { "type": "boolean" }, "reason": { "type": "string" } } } } } })) } }),
                &with_common(&[400, 404, 422])) } }),
    );
    let device = query("device", schema_ref("DnsLabel"), "Needed when the app runs on several devices");
    let container = query("container", schema_ref("DnsLabel"), "Needed when the app has several containers");
    let attach_codes = with_common(&[400, 404, 409, 422]);
    paths.insert(
        "/api/v1/apps/{name}/logs".into(),
        json!({ "get": { "operationId": "get_app_logs", "summary": "A container's log, from the device through its connection to the hub (operator)",
            "description": "409 when the device is not connected",
            "parameters": [name_param(Kind::App), namespace_param(false), device.clone(), container.clone(),
                query("follow", json!({ "type": "boolean" }), "Keep streaming what the container writes"),
                query("tailLines", json!({ "type": "integer", "minimum": 0, "maximum": u32::MAX }), "Only the last lines"),
                query("sinceSeconds", json!({ "type": "integer", "minimum": 1, "maximum": u32::MAX }), "Only what was written in this last while (to within 2 s)")],
            "responses": responses(json!({ "200": { "description": "The log (stdout and stderr as written), streamed",
                "content": { "text/plain": { "schema": { "type": "string" } } } } }), &attach_codes) } }),
    );
    paths.insert(
        "/api/v1/apps/{name}/exec".into(),
        json!({ "get": { "operationId": "exec_in_app", "summary": "Run a command in a container (WebSocket; operators; audited)",
            "parameters": [name_param(Kind::App), namespace_param(false), device, container,
                query("command", json!({ "type": "array", "items": { "type": "string" }, "minItems": 1, "maxItems": 256 }), "Repeat for each argument"),
                query("stdin", json!({ "type": "boolean" }), "Pass the client's input"),
                query("tty", json!({ "type": "boolean" }), "Run on a terminal"),
                query("cols", json!({ "type": "integer", "minimum": 0, "maximum": 65535 }), "Terminal width"),
                query("rows", json!({ "type": "integer", "minimum": 0, "maximum": 65535 }), "Terminal height")],
            "responses": responses(json!({ "101": { "description": "WebSocket: binary messages carry a channel byte (0 stdin, 1 stdout, 2 stderr); text messages are JSON: resize and stdinEof from the client, exitCode or error last from the hub" } }),
                &attach_codes) } }),
    );
    paths.insert(
        "/api/v1/enrolment-tokens".into(),
        json!({
            "get": { "operationId": "list_enrolment_tokens", "summary": "List enrolment tokens, without secrets (operator; a scoped token sees its sites' only)",
                "responses": responses(json!({ "200": { "description": "Tokens",
                    "content": json_content(token_list_schema(enrolment_token_schema())) } }), COMMON) },
            "post": { "operationId": "create_enrolment_token", "summary": "Create an enrolment token; the secret is returned once (operator)",
                "requestBody": { "required": false, "content": json_content(schema_ref("CreateEnrolmentToken")) },
                "responses": responses(json!({ "201": { "description": "Created, with `token`",
                    "content": json_content(enrolment_token_schema()) } }), &with_common(&[409, 413, 422])) }
        }),
    );
    paths.insert(
        "/api/v1/enrolment-tokens/{id}".into(),
        json!({ "delete": { "operationId": "delete_enrolment_token", "summary": "Revoke an enrolment token (operator)",
            "parameters": [{ "name": "id", "in": "path", "required": true, "schema": { "type": "string", "minLength": 1 } }],
            "responses": responses(json!({ "200": { "description": "Deleted", "content": json_content(json!({
                "type": "object", "required": ["deleted"], "properties": { "deleted": { "type": "string" } } })) } }),
                &with_common(&[400, 404])) } }),
    );
    paths.insert(
        "/api/v1/api-tokens".into(),
        json!({
            "get": { "operationId": "list_api_tokens", "summary": "List API tokens (admin)",
                "responses": responses(json!({ "200": { "description": "Tokens",
                    "content": json_content(token_list_schema(api_token_schema())) } }), COMMON) },
            "post": { "operationId": "create_api_token", "summary": "Create an API token (admin); the secret is returned once",
                "requestBody": { "required": false, "content": json_content(schema_ref("CreateApiToken")) },
                "responses": responses(json!({ "201": { "description": "Created, with `token`",
                    "content": json_content(api_token_schema()) } }), &with_common(&[409, 413, 422])) }
        }),
    );
    paths.insert(
        "/api/v1/api-tokens/{id}".into(),
        json!({ "delete": { "operationId": "delete_api_token", "summary": "Revoke an API token (admin). 409 for the token the request uses",
            "parameters": [{ "name": "id", "in": "path", "required": true, "schema": { "type": "string", "minLength": 1 } }],
            "responses": responses(json!({ "200": { "description": "Deleted", "content": json_content(json!({
                "type": "object", "required": ["deleted"], "properties": { "deleted": { "type": "string" } } })) } }),
                &with_common(&[400, 404, 409])) } }),
    );
    let member = json!({ "type": "object", "required": ["nodeId", "raftAddr", "voter", "leader"], "properties": {
        "nodeId": { "type": "integer", "minimum": 1 }, "raftAddr": { "type": "string" },
        "voter": { "type": "boolean" }, "leader": { "type": "boolean" },
        "agentAddress": { "type": ["string", "null"], "description": "Where devices reach it (QUIC), as it recorded" },
        "agentTcpAddress": { "type": ["string", "null"], "description": "Its TCP fallback for devices" } } });
    let cluster = json!({
        "type": "object", "required": ["nodeId", "isLeader", "revision", "members", "connectedDevices", "quicAddr", "version"], "properties": {
            "nodeId": { "type": "integer", "minimum": 1 },
            "leader": { "type": ["integer", "null"], "minimum": 0 }, "isLeader": { "type": "boolean" },
            "revision": { "type": "integer", "minimum": 0 },
            "members": { "type": "array", "items": member },
            "connectedDevices": { "type": "integer", "minimum": 0, "description": "Devices connected to this hub" },
            "fleetConnectedDevices": { "type": ["integer", "null"], "minimum": 0, "description": "On the leader: devices connected to any hub it hears from" },
            "quicAddr": { "type": "string" }, "agentAddress": { "type": ["string", "null"] },
            "agentAddressProblem": { "type": ["string", "null"] }, "version": { "type": "string" } } });
    let join_token = json!({ "type": "string", "minLength": 1, "maxLength": 512,
        "description": "From `POST /api/v1/cluster/join-tokens`; a wrong, altered or expired one is 401" });
    let raft_addr = json!({ "type": "string", "minLength": 3, "maxLength": 255, "pattern": "^[A-Za-z0-9._:\\[\\]-]+:([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])$",
        "description": "`host:port` the other hubs reach the new hub's Raft listener at; port 1-65535" });
    paths.insert(
        "/api/v1/cluster".into(),
        json!({ "get": { "operationId": "get_cluster", "summary": "This hub, the cluster's members and the leader",
            "responses": responses(json!({ "200": { "description": "Status", "content": json_content(cluster.clone()) } }),
                COMMON) } }),
    );
    paths.insert(
        "/api/v1/cluster/join-tokens".into(),
        json!({ "post": { "operationId": "create_join_token", "summary": "A token with which a new hub joins the cluster (admin, fleet-wide token). Valid until it expires, for any number of joins",
            "requestBody": { "required": false, "content": json_content(json!({ "type": "object", "additionalProperties": false, "properties": {
                "ttlSeconds": { "type": "integer", "minimum": 1, "maximum": crate::cluster::MAX_JOIN_TTL.as_secs(), "description": "Default 3600" } } })) },
            "responses": responses(json!({ "200": { "description": "The token", "content": json_content(json!({
                "type": "object", "required": ["token", "expiresAt"], "properties": {
                    "token": { "type": "string" }, "expiresAt": schema_ref("Timestamp") } })) } }),
                &with_common(&[400, 413, 422])) } }),
    );
    paths.insert(
        "/api/v1/cluster/join".into(),
        json!({ "post": { "operationId": "join_cluster", "summary": "Step 1 of `flotilla hub join`: a node id, a certificate for the new hub's Raft name and the cluster's hub key. Authenticated by the join token in the body, not by an API token",
            "security": [],
            "requestBody": { "required": true, "content": json_content(json!({ "type": "object", "additionalProperties": false,
                "required": ["token", "raftAddr"], "properties": {
                    "token": join_token.clone(), "raftAddr": raft_addr.clone(),
                    "nodeId": { "type": ["integer", "null"], "minimum": 1, "description": "Default: the next free id" } } })) },
            "responses": responses(json!({ "200": { "description": "The new hub's credentials", "content": json_content(json!({
                "type": "object", "required": ["nodeId", "hubKey", "chainPem", "keyPem", "trustedPem", "members"], "properties": {
                    "nodeId": { "type": "integer", "minimum": 1 }, "hubKey": { "type": "string", "contentEncoding": "base64" },
                    "chainPem": { "type": "string" }, "keyPem": { "type": "string" }, "trustedPem": { "type": "string" },
                    "members": { "type": "object", "additionalProperties": { "type": "string" } } } })) } }),
                &[400, 401, 408, 409, 413, 422, 503]) } }),
    );
    paths.insert(
        "/api/v1/cluster/members".into(),
        json!({ "post": { "operationId": "add_cluster_member", "summary": "Step 2 of `flotilla hub join`: the leader adds the new hub as a learner, catches it up and makes it a voter (idempotent). Authenticated by the join token in the body",
            "security": [],
            "requestBody": { "required": true, "content": json_content(json!({ "type": "object", "additionalProperties": false,
                "required": ["token", "nodeId", "raftAddr"], "properties": {
                    "token": join_token, "raftAddr": raft_addr, "nodeId": { "type": "integer", "minimum": 1 } } })) },
            "responses": responses(json!({ "200": { "description": "The cluster with the new member", "content": json_content(cluster.clone()) } }),
                &[400, 401, 408, 413, 422, 503]) } }),
    );
    paths.insert(
        "/api/v1/cluster/members/{id}".into(),
        json!({ "delete": { "operationId": "remove_cluster_member", "summary": "Remove a hub from the cluster (admin, fleet-wide token). 409 for the last voter",
            "parameters": [{ "name": "id", "in": "path", "required": true, "schema": { "type": "integer", "minimum": 0 } }],
            "responses": responses(json!({ "200": { "description": "The cluster without it", "content": json_content(cluster) } }),
                &with_common(&[400, 404, 409])) } }),
    );
    paths.insert(
        "/healthz".into(),
        json!({ "get": { "operationId": "healthz", "summary": "Liveness", "security": [],
            "responses": { "200": { "description": "ok", "content": { "text/plain": { "schema": { "const": "ok" } } } } } } }),
    );
    paths.insert(
        "/metrics".into(),
        json!({ "get": { "operationId": "metrics", "summary": "Prometheus metrics, as OpenMetrics text (a viewer token for every site: a token scoped to sites gets 403)",
            "responses": responses(json!({ "200": { "description": "The hub's series",
                "content": { "application/openmetrics-text": { "schema": { "type": "string" } } } } }), COMMON) } }),
    );
    paths.insert(
        "/api/v1/openapi.json".into(),
        json!({ "get": { "operationId": "openapi", "summary": "This document",
            "responses": responses(json!({ "200": { "description": "OpenAPI 3.1",
                "content": json_content(json!({ "type": "object" })) } }), COMMON) } }),
    );
    paths
}

/// The derived schemas, with what a derive cannot say added: map keys' shapes
/// (`propertyNames`) and map sizes.
fn schemas() -> Value {
    let mut schemas = serde_json::to_value(Schemas::openapi().components.expect("components").schemas)
        .expect("schemas serialise");
    let label_keys = json!({ "$ref": "#/components/schemas/LabelKey" });
    let config_keys = json!({ "$ref": "#/components/schemas/ConfigKey" });
    let meta = &mut schemas["ObjectMeta"]["properties"];
    meta["labels"]["propertyNames"] = label_keys.clone();
    meta["labels"]["maxProperties"] = json!(shared_proto::validate::MAX_LABELS);
    meta["annotations"]["propertyNames"] = json!({ "type": "string", "minLength": 1, "maxLength": 253 });
    meta["annotations"]["maxProperties"] = json!(shared_proto::validate::MAX_LABELS);
    meta["annotations"]["additionalProperties"] =
        json!({ "type": "string", "maxLength": shared_proto::validate::MAX_STRING });
    schemas["LabelSelector"]["properties"]["matchLabels"]["propertyNames"] = label_keys.clone();
    schemas["LabelSelector"]["properties"]["matchLabels"]["maxProperties"] =
        json!(shared_proto::validate::MAX_LABELS);
    for field in ["data", "binaryData"] {
        let map = &mut schemas["ConfigSpec"]["properties"][field];
        map["propertyNames"] = config_keys.clone();
        map["maxProperties"] = json!(shared_proto::validate::MAX_CONFIG_KEYS);
    }
    schemas["ConfigSpec"]["properties"]["binaryData"]["additionalProperties"] = json!({ "type": "string", "contentEncoding": "base64",
            // Standard alphabet, padded, canonical: the bits after the last byte are zero.
            "pattern": "^([A-Za-z0-9+/]{4})*([A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)?$" });
    // An app without containers is refused: its spec is required, though `spec` is
    // optional for the other kinds.
    schemas["App"]["required"].as_array_mut().expect("required").push(json!("spec"));
    schemas["CreateEnrolmentToken"]["properties"]["labels"]["propertyNames"] = label_keys;
    // Admin tokens reach every site: one with sites is refused.
    schemas["CreateApiToken"]["if"] =
        json!({ "required": ["role"], "properties": { "role": { "const": "admin" } } });
    schemas["CreateApiToken"]["then"] =
        json!({ "properties": { "sites": { "maxItems": 0 }, "namespaces": { "maxItems": 0 } } });
    // An HTTP probe's header: a token name and a value without control characters.
    schemas["HttpGetAction"]["properties"]["headers"]["items"]["minItems"] = json!(2);
    schemas["HttpGetAction"]["properties"]["headers"]["items"]["maxItems"] = json!(2);
    schemas["HttpGetAction"]["properties"]["headers"]["items"]["prefixItems"] = json!([
        { "type": "string", "pattern": "^[-_A-Za-z0-9]{1,64}$" },
        { "type": "string", "maxLength": 1024, "pattern": "^[^\\x00-\\x1f\\x7f]*$" }]);
    for field in ["command", "args"] {
        schemas["ContainerSpec"]["properties"][field]["items"]["maxLength"] =
            json!(shared_proto::validate::MAX_STRING);
    }
    schemas["ExecAction"]["properties"]["command"]["items"]["maxLength"] =
        json!(shared_proto::validate::MAX_STRING);
    // Hub-owned: a derive drops `readOnly` beside a reference, so it is set here.
    for kind in Kind::ALL {
        schemas[kind.as_str()]["properties"]["status"]["readOnly"] = json!(true);
    }
    schemas["ObjectMeta"]["properties"]["createdAt"]["readOnly"] = json!(true);
    rules_across_fields(&mut schemas);
    bound_integers(&mut schemas);
    schemas
}

/// `{"required": [field], field: an object}`: the field is set (null means unset).
fn set(field: &str) -> Value {
    json!({ "required": [field], "properties": { field: { "type": "object" } } })
}

/// What the validator checks across fields that JSON Schema can say (`oneOf`,
/// `if`/`then`): exactly one action or source, operators and their values, settings
/// that need another. What it cannot (names unique in a list, references between
/// lists, requests within limits) is in the App's PUT description.
fn rules_across_fields(schemas: &mut Value) {
    schemas["Probe"]["oneOf"] = json!([set("exec"), set("httpGet"), set("tcpSocket")]);
    schemas["Handler"]["oneOf"] = json!([set("exec"), set("httpGet")]);
    schemas["EnvSource"]["oneOf"] = json!([set("config"), set("secret")]);
    schemas["VolumeSpec"]["oneOf"] =
        json!([set("persistent"), set("hostPath"), set("tmpfs"), set("config"), set("secret")]);
    schemas["EnvVar"]["if"] = set("valueFrom");
    schemas["EnvVar"]["then"] = json!({ "properties": { "value": { "maxLength": 0 } } });
    schemas["Toleration"]["if"] =
        json!({ "required": ["operator"], "properties": { "operator": { "const": "Exists" } } });
    schemas["Toleration"]["then"] = json!({ "properties": { "value": { "maxLength": 0 } } });
    schemas["Toleration"]["else"] =
        json!({ "required": ["key"], "properties": { "key": { "minLength": 1 } } });
    schemas["SelectorRequirement"]["if"] =
        json!({ "properties": { "operator": { "enum": ["In", "NotIn"] } } });
    schemas["SelectorRequirement"]["then"] =
        json!({ "required": ["values"], "properties": { "values": { "minItems": 1 } } });
    schemas["SelectorRequirement"]["else"] = json!({ "properties": { "values": { "maxItems": 0 } } });
    let caps: Vec<&str> = shared_proto::validate::CAPABILITIES.iter().copied().chain(["ALL"]).collect();
    for field in ["addCapabilities", "dropCapabilities"] {
        let list = &mut schemas["SecuritySpec"]["properties"][field];
        list["items"] = json!({ "enum": caps });
        list["maxItems"] = json!(caps.len());
    }
    // Limits: memory at least 4Mi, CPU above zero, as read and as shown.
    schemas["ResourceLimits"]["properties"]["memory"] = json!({ "oneOf": [{ "type": "null" },
        { "type": "integer", "minimum": shared_proto::validate::MIN_MEMORY_LIMIT, "maximum": shared_proto::quantity::MAX_BYTES },
        { "type": "string", "pattern": shared_proto::openapi::MEMORY_LIMIT }],
        "description": "At least 4Mi" });
    schemas["ResourceLimits"]["properties"]["cpu"] = json!({ "oneOf": [{ "type": "null" },
        { "type": "integer", "minimum": 1, "maximum": 999_999_999u64 },
        { "type": "string", "pattern": shared_proto::openapi::CPU_LIMIT }],
        "description": "Above 0: cores (\"2\", \"0.5\") or millicores (\"500m\")" });
    schemas["ResourceLimits"]["properties"]["pids"]["description"] = json!("At least 1");
    // An app in a user namespace has a network of its own, and its containers are not
    // privileged and run as ids the namespace maps.
    let ids =
        json!({ "type": ["integer", "null"], "maximum": shared_proto::validate::USER_NAMESPACE_IDS - 1 });
    let unprivileged = json!({ "type": "array", "items": { "properties": { "security": { "properties": {
        "privileged": { "const": false }, "runAsUser": ids.clone(), "runAsGroup": ids } } } } });
    let user_namespace = json!({
        "if": { "required": ["userNamespace"], "properties": { "userNamespace": { "const": true } } },
        "then": { "required": ["network"], "properties": {
            "network": { "enum": ["None", "Isolated"] }, "containers": unprivileged.clone(), "initContainers": unprivileged } } });
    // With network None nothing is published.
    let no_host_ports = json!({ "type": "array", "items": { "properties": { "ports": { "items": {
        "properties": { "hostPort": { "type": "null" } } } } } } });
    let network_none = json!({
        "if": { "required": ["network"], "properties": { "network": { "const": "None" } } },
        "then": { "properties": { "containers": no_host_ports.clone(), "initContainers": no_host_ports } } });
    schemas["AppSpec"]["allOf"] = json!([user_namespace, network_none]);
    // Init containers run to completion: no probes, no hooks.
    let no_probes_or_hooks = json!({ "properties": {
        "livenessProbe": { "type": "null" }, "readinessProbe": { "type": "null" }, "startupProbe": { "type": "null" },
        "lifecycle": { "properties": { "postStart": { "type": "null" }, "preStop": { "type": "null" } } } } });
    let init = &mut schemas["AppSpec"]["properties"]["initContainers"]["items"];
    *init = json!({ "allOf": [init.clone(), no_probes_or_hooks] });
    // Liveness and startup probes pass on one success.
    for probe in ["livenessProbe", "startupProbe"] {
        schemas["ContainerSpec"]["properties"][probe] = json!({ "oneOf": [{ "type": "null" }, { "allOf": [
            { "$ref": "#/components/schemas/Probe" },
            { "properties": { "successThreshold": { "const": 1 } } }] }],
            "description": "successThreshold must be 1" });
    }
    // A network policy applies to an isolated app only.
    schemas["AppSpec"]["dependentSchemas"] = json!({ "networkPolicy": { "anyOf": [
        { "properties": { "networkPolicy": { "type": "null" } } },
        { "required": ["network"], "properties": { "network": { "const": "Isolated" } } }] } });
}

/// Gives every unsigned integer without a maximum the largest its Rust type holds
/// (`int32` is a `u32` here, `int64` a `u64`): a bigger number does not parse.
fn bound_integers(v: &mut Value) {
    match v {
        Value::Object(m) => {
            let unsigned = m.get("minimum").and_then(Value::as_f64).is_some_and(|min| min >= 0.0);
            if unsigned && !m.contains_key("maximum") {
                match m.get("format").and_then(Value::as_str) {
                    Some("int32") => _ = m.insert("maximum".into(), json!(u32::MAX)),
                    Some("int64") => _ = m.insert("maximum".into(), json!(u64::MAX)),
                    _ => {}
                }
            }
            m.values_mut().for_each(bound_integers);
        }
        Value::Array(a) => a.iter_mut().for_each(bound_integers),
        _ => {}
    }
}

pub fn document() -> Value {
    json!({
        "openapi": "3.1.0",
        "info": { "title": "Flotilla hub API", "version": env!("CARGO_PKG_VERSION"),
            "description": "Every route but /healthz needs a bearer token (`flotilla api-token create`). Errors are RFC 9457 problem details (application/problem+json) whose `errors` member names the fields at fault." },
        "security": [{ "bearer": [] }],
        "paths": paths(),
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": schemas(),
        }
    })
}

/// The document as committed: pretty, with a final newline.
pub fn document_text() -> String {
    let mut text = serde_json::to_string_pretty(&document()).expect("the document serialises");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workspace_root() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    /// The committed `docs/openapi.json` is what the code generates. With
    /// `UPDATE_OPENAPI=1` the test writes it instead.
    #[test]
    fn committed_document_matches_the_generated_one() {
        let path = workspace_root().join(COMMITTED_PATH);
        let generated = document_text();
        if std::env::var_os("UPDATE_OPENAPI").is_some() {
            std::fs::write(&path, &generated).unwrap();
            return;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "{COMMITTED_PATH} is not what the code generates: regenerate it with \
             `UPDATE_OPENAPI=1 cargo test -p cloud-hub --lib openapi` and commit it"
        );
    }

    /// Every `$ref` names a schema the document holds.
    #[test]
    fn every_reference_resolves() {
        fn walk(v: &Value, doc: &Value, n_refs: &mut usize) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("$ref") {
                        let name = r.strip_prefix("#/components/schemas/").expect("a schema reference");
                        assert!(doc["components"]["schemas"].get(name).is_some(), "{r} does not resolve");
                        *n_refs += 1;
                    }
                    m.values().for_each(|x| walk(x, doc, n_refs));
                }
                Value::Array(a) => a.iter().for_each(|x| walk(x, doc, n_refs)),
                _ => {}
            }
        }
        let doc = document();
        let mut n_refs = 0;
        walk(&doc, &doc, &mut n_refs);
        assert!(n_refs > 50, "{n_refs}");
    }

    #[test]
    fn every_route_is_described() {
        let doc = super::document();
        for path in [
            "/api/v1/sites",
            "/api/v1/apps/{name}",
            "/api/v1/secrets/{name}",
            "/api/v1/configs",
            "/api/v1/devices/{name}/manifest",
            "/api/v1/devices/{name}/decommission",
            "/api/v1/devices/{name}/approve",
            "/api/v1/devices/{name}/reject",
            "/api/v1/devices/{name}/usage",
            "/api/v1/ca",
            "/api/v1/ca/rotate",
            "/api/v1/ca/activate",
            "/api/v1/ca/retire",
            "/api/v1/audit",
            "/api/v1/backup",
            "/api/v1/apps/{name}/placement",
            "/api/v1/apps/{name}/logs",
            "/api/v1/apps/{name}/exec",
            "/api/v1/images",
            "/api/v1/enrolment-tokens",
            "/api/v1/enrolment-tokens/{id}",
            "/api/v1/api-tokens",
            "/api/v1/api-tokens/{id}",
            "/api/v1/cluster",
            "/api/v1/cluster/join-tokens",
            "/api/v1/cluster/join",
            "/api/v1/cluster/members",
            "/api/v1/cluster/members/{id}",
            "/api/v1/openapi.json",
            "/healthz",
            "/metrics",
        ] {
            assert!(doc["paths"].get(path).is_some(), "{path} missing from the OpenAPI document");
        }
        assert!(doc["paths"]["/api/v1/images"]["post"].is_object());
        assert!(doc["paths"]["/api/v1/apps/{name}"]["put"].is_object());
        assert!(doc["paths"]["/api/v1/images/{name}"].get("put").is_none());
        // Every operation but the unauthenticated probe answers 401, and every error
        // is a problem.
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                if method == "parameters" || path == "/healthz" {
                    continue;
                }
                let codes = op["responses"].as_object().unwrap();
                assert!(codes.contains_key("401"), "{method} {path}: 401 undocumented");
                for (code, r) in codes {
                    if code.starts_with('4') || code.starts_with('5') {
                        assert!(
                            r["content"].get("application/problem+json").is_some(),
                            "{method} {path} {code}"
                        );
                    }
                }
            }
        }
        // Lists and watches: every parameter the handler reads, and the answers it gives.
        for plural in ["sites", "devices", "apps", "images", "configs", "secrets"] {
            let get = &doc["paths"][format!("/api/v1/{plural}")]["get"];
            let names: Vec<&str> =
                get["parameters"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
            for p in [
                "labelSelector",
                "fieldSelector",
                "limit",
                "continue",
                "watch",
                "sinceRevision",
                "Last-Event-ID",
            ] {
                assert!(names.contains(&p), "{plural}: {p} undocumented");
            }
            assert_eq!(names.contains(&"site"), matches!(plural, "sites" | "devices" | "apps"), "{plural}");
            for code in ["200", "401", "403", "410", "422", "503"] {
                assert!(get["responses"].get(code).is_some(), "{plural}: {code} undocumented");
            }
            assert!(get["responses"]["200"]["content"].get("text/event-stream").is_some());
        }
        for code in ["400", "401", "403", "404", "409", "413", "422", "503"] {
            assert!(
                doc["paths"]["/api/v1/apps/{name}"]["put"]["responses"].get(code).is_some(),
                "PUT app {code}"
            );
        }
    }

    /// The objects refuse unknown fields, and carry the validator's rules.
    #[test]
    fn schemas_carry_the_servers_constraints() {
        let doc = document();
        let s = &doc["components"]["schemas"];
        for name in ["Site", "Device", "App", "Config", "Secret", "ObjectMeta", "ContainerSpec", "Probe"] {
            assert_eq!(s[name]["additionalProperties"], json!(false), "{name}");
        }
        assert_eq!(s["DnsLabel"]["pattern"], shared_proto::openapi::DNS_LABEL);
        assert_eq!(s["AppSpec"]["properties"]["containers"]["maxItems"], 16);
        assert_eq!(
            s["ObjectMeta"]["properties"]["labels"]["propertyNames"]["$ref"],
            "#/components/schemas/LabelKey"
        );
    }

    /// Each pattern accepts exactly what the validator accepts, on the validator's own
    /// examples and edge cases.
    #[test]
    fn patterns_agree_with_the_validator() {
        use shared_proto::openapi as p;
        use shared_proto::validate as v;
        let re = |s: &str| regex::Regex::new(s).unwrap();
        let long = "a".repeat(63);
        let too_long = "a".repeat(64);
        let dns = re(p::DNS_LABEL);
        for s in ["a", "store-12", "0", "-a", "a-", "A", "a_b", "", long.as_str(), too_long.as_str()] {
            assert_eq!(dns.is_match(s), v::dns_label_problem(s).is_none(), "{s:?}");
        }
        let (key, value) = (re(p::LABEL_KEY), re(p::LABEL_VALUE));
        for k in
            ["role", "example.com/role", "a.b.c/x", "/role", "a/b/c", "Role_1.x", "-x", "x.", "Ex.com/x", ""]
        {
            assert_eq!(key.is_match(k), v::label_problem(k, "").is_none(), "{k:?}");
        }
        for val in ["", "pos", "-x", "a.b", "A_1", "x-", long.as_str(), too_long.as_str()] {
            assert_eq!(value.is_match(val), v::label_problem("k", val).is_none(), "{val:?}");
        }
        let digest = format!("demo@sha256:{}", "a".repeat(64));
        let image = re(p::IMAGE_REFERENCE);
        for s in [
            "demo-httpd",
            "demo-httpd:1.0",
            "library/busybox:1.36",
            "registry.local:5000/a/b:c",
            digest.as_str(),
            "",
            "Demo",
            "demo:",
            "demo@sha256:xyz",
            "demo:t@g",
            "a:99999/b",
            ".a",
        ] {
            assert_eq!(image.is_match(s), v::image_reference_problem(s).is_none(), "{s:?}");
        }
        let config_key = re(p::CONFIG_KEY);
        for k in ["app.toml", ".env", "...", "..a", "_", ".", "..", "a/b", "", "a b"] {
            assert_eq!(config_key.is_match(k), v::config_key_problem(k).is_none(), "{k:?}");
        }
        let max = shared_proto::quantity::MAX_BYTES;
        let bytes_re = re(p::BYTES_QUANTITY);
        for q in [
            "64Mi",
            "1G",
            "4096",
            "512Ki",
            "99999Ti",
            "999999999999999999",
            "64MB",
            "",
            "Mi",
            "-1",
            "999999Ti",
        ] {
            let within = shared_proto::Bytes::parse(q).is_ok_and(|b| b.0 <= max);
            assert_eq!(bytes_re.is_match(q), within, "{q:?}");
        }
        let cpu = re(p::CPU_QUANTITY);
        for q in ["2", "0.5", ".25", "250m", "", "m", "1.2345", "-1", "abc", "1.x", "2."] {
            assert_eq!(cpu.is_match(q), shared_proto::CpuMillis::parse(q).is_ok(), "{q:?}");
        }
        let doc = document();
        let base64_pattern =
            doc["components"]["schemas"]["ConfigSpec"]["properties"]["binaryData"]["additionalProperties"]["pattern"]
                .as_str()
                .unwrap()
                .to_string();
        let b64 = re(&base64_pattern);
        for s in ["", "QQ==", "QR==", "QUI=", "QUJ=", "QUJD", "iVBORw0KGgo=", "QQ", "Q===", "QU I="] {
            use base64::Engine;
            let decodes = base64::engine::general_purpose::STANDARD.decode(s).is_ok();
            assert_eq!(b64.is_match(s), decodes, "{s:?}");
        }
        // What each quantity pattern takes is read, and what the hub shows is taken.
        let (memory, cpu_limit) = (re(p::MEMORY_LIMIT), re(p::CPU_LIMIT));
        for q in
            ["4Mi", "4194304", "4194303", "4096Ki", "4095Ki", "4195k", "4194k", "5M", "4M", "1G", "3Mi", "0"]
        {
            let at_least_4mi = shared_proto::Bytes::parse(q).is_ok_and(|b| b.0 >= v::MIN_MEMORY_LIMIT);
            assert_eq!(memory.is_match(q), at_least_4mi, "{q:?}");
        }
        for q in ["1", "0.5", ".001", "0.000", "0", "0m", "1m", "999999999", "2.5"] {
            let above_zero = shared_proto::CpuMillis::parse(q).is_ok_and(|c| c.0 > 0);
            assert_eq!(cpu_limit.is_match(q), above_zero, "{q:?}");
        }
        for n in [
            1u64,
            1023,
            1024,
            4 << 20,
            (4 << 20) + 1,
            999_999_999,
            1 << 40,
            99_999 << 40,
            100_000 << 40,
            max,
            max - max % 1024,
        ] {
            let shown = shared_proto::Bytes(n).to_string();
            assert!(bytes_re.is_match(&shown), "{shown:?}");
            assert_eq!(memory.is_match(&shown), n >= v::MIN_MEMORY_LIMIT, "{shown:?}");
        }
        for n in [1u64, 500, 1000, 999_999_999_999, 999_999_999_000] {
            let shown = shared_proto::CpuMillis(n).to_string();
            assert!(cpu.is_match(&shown) && cpu_limit.is_match(&shown), "{shown:?}");
        }
        let cidr = re(p::CIDR);
        for c in [
            "10.0.0.0/8",
            "203.0.113.7/32",
            "0.0.0.0/0",
            "2001:db8:0:0:0:0:0:0/32",
            "10.0.0.0/33",
            "10.0.0/8",
            "256.0.0.0/8",
            "x/8",
            "10.0.0.0",
        ] {
            assert_eq!(cidr.is_match(c), v::parse_cidr(c).is_some(), "{c:?}");
        }
    }
}
