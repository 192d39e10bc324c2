//! The OpenAPI 3.1 description of the API, served at `/api/v1/openapi.json`. Written
//! by hand next to the routes (the shared-proto types stay free of schema macros so
//! the agent does not link them); a test checks every route is described.

use serde_json::{Value, json};

fn object_schema(kind: &str, spec: Value, status: Value) -> Value {
    json!({
        "type": "object",
        "required": ["apiVersion", "kind", "metadata"],
        "additionalProperties": false,
        "properties": {
            "apiVersion": { "const": shared_proto::API_VERSION },
            "kind": { "const": kind },
            "metadata": { "$ref": "#/components/schemas/ObjectMeta" },
            "spec": spec,
            "status": status,
        }
    })
}

fn crud(kind: &str, plural: &str, appliable: bool) -> (Value, Value) {
    let item = json!({ "$ref": format!("#/components/schemas/{kind}") });
    let q = |name: &str, schema: Value, description: &str| json!({ "name": name, "in": "query", "schema": schema, "description": description });
    let fields = super::query::FIELDS.iter().find(|(k, _)| k.plural() == plural).map_or(&[][..], |(_, f)| *f);
    let mut parameters = vec![
        q(
            "labelSelector",
            json!({ "type": "string", "maxLength": shared_proto::selector::MAX_SELECTOR_LEN }),
            "Kubernetes label selector: `app=pos,tier!=db,env in (a,b),zone notin (x),gpu,!canary` (at most 64 requirements)",
        ),
        q(
            "fieldSelector",
            json!({ "type": "string" }),
            &format!(
                "`field=value`, `field==value` or `field!=value`, comma-separated (at most {}), on: {}",
                super::query::MAX_FIELD_TERMS,
                fields.join(", ")
            ),
        ),
        q(
            "limit",
            json!({ "type": "integer", "minimum": 1, "maximum": super::query::MAX_LIST_LIMIT }),
            "Most items in this page; `metadata.continue` then names the next. Without it, the whole list",
        ),
        q(
            "continue",
            json!({ "type": "string" }),
            "The previous page's `metadata.continue`: the next page of the same list, read at the same revision. 410 when this hub no longer keeps that revision: list again",
        ),
        q(
            "watch",
            json!({ "type": "boolean" }),
            "Stream the changes (Server-Sent Events) instead of listing; the filters apply",
        ),
        q(
            "sinceRevision",
            json!({ "type": "integer", "minimum": 0 }),
            "With watch: the changes after this revision (a list's `metadata.revision`); default: from now on. 410 when this hub no longer keeps it",
        ),
        json!({ "name": "Last-Event-ID", "in": "header", "schema": { "type": "string", "pattern": "^[0-9]+(:[0-9]+)?$" },
            "description": "With watch: resume after this event (the last `id:` received); wins over sinceRevision" }),
    ];
    if matches!(plural, "sites" | "devices" | "apps") {
        parameters.push(q(
            "site",
            json!({ "type": "string" }),
            "Only the site's own object, its devices, and the apps placed there (or placed fleet-wide)",
        ));
    }
    let collection = json!({
        "get": {
            "summary": format!("List or watch {plural}"),
            "description": "A list is read at one revision (`metadata.revision`); watching from it (`watch=true&sinceRevision=`) misses nothing and repeats nothing. Watch events: `id:` the revision (`R:i` when more events of revision R follow), `event:` ADDED, MODIFIED, DELETED, BOOKMARK (nothing for you up to that revision) or ERROR (last, with an error body; 410 means list again); comments every 15 s. An object that stops matching the filters is DELETED, one that starts is ADDED. A client that reads slower than the hub changes is dropped with a 410 ERROR. Lists are linearizable (the leader answers; 503 elsewhere); watches are served by any hub.",
            "parameters": parameters,
            "responses": {
                "200": { "description": format!("The {plural} that match, or their changes"), "content": {
                    "application/json": { "schema": { "type": "object", "properties": {
                        "metadata": { "type": "object", "properties": {
                            "revision": { "type": "integer", "description": "The revision the whole list (every page) is read at" },
                            "continue": { "type": "string", "description": "Present when more items follow: pass it as `continue`" } } },
                        "revision": { "type": "integer", "description": "Same as metadata.revision" },
                        "items": { "type": "array", "items": item } } } },
                    "text/event-stream": { "schema": { "type": "string" } } } },
                "410": { "description": "The revision asked for (sinceRevision, Last-Event-ID, continue) is older than this hub's history: list again", "$ref": "#/components/responses/Error" },
                "422": { "description": "A parameter is malformed: the error names it", "$ref": "#/components/responses/Error" },
                "503": { "$ref": "#/components/responses/Error" }
            }
        }
    });
    let mut one = json!({
        "parameters": [{ "name": "name", "in": "path", "required": true, "schema": { "type": "string" } }],
        "get": { "summary": format!("Get one {kind}"), "responses": {
            "200": { "description": kind, "content": { "application/json": { "schema": item } } },
            "404": { "$ref": "#/components/responses/Error" } } },
        "delete": { "summary": format!("Delete one {kind}"), "responses": {
            "200": { "description": "Deleted" }, "404": { "$ref": "#/components/responses/Error" },
            "409": { "$ref": "#/components/responses/Error" } } },
    });
    if appliable {
        one["put"] = json!({
            "summary": format!("Create or update one {kind} (declarative apply)"),
            "description": "The body is the whole object. Sending metadata.revision makes the write conditional.",
            "requestBody": { "required": true, "content": { "application/json": { "schema": item } } },
            "responses": {
                "200": { "description": "Updated", "content": { "application/json": { "schema": item } } },
                "201": { "description": "Created", "content": { "application/json": { "schema": item } } },
                "409": { "$ref": "#/components/responses/Error" },
                "422": { "$ref": "#/components/responses/Error" }
            }
        });
    }
    (collection, one)
}

/// `Config` and `Secret` data: keys are file names; at most 64 keys and 256 KiB.
fn config_schemas() -> (Value, Value) {
    let key = json!({ "type": "string", "pattern": "^[-._a-zA-Z0-9]{1,253}$" });
    let spec = json!({ "type": "object", "properties": {
        "data": { "type": "object", "maxProperties": 64, "propertyNames": key.clone(),
            "additionalProperties": { "type": "string" } },
        "binaryData": { "type": "object", "maxProperties": 64, "propertyNames": key,
            "additionalProperties": { "type": "string", "contentEncoding": "base64" } } },
        "description": "A Secret's data is write-only: reads return its keys and digest, never its values" });
    let status = json!({ "readOnly": true, "type": "object", "properties": {
        "keys": { "type": "array", "items": { "type": "string" } },
        "digest": { "type": "string" } } });
    (spec, status)
}

pub fn document() -> Value {
    let (config_spec, config_status) = config_schemas();
    let mut paths = serde_json::Map::new();
    for (kind, plural, appliable) in [
        ("Site", "sites", true),
        ("Device", "devices", true),
        ("App", "apps", true),
        ("Image", "images", false),
        ("Config", "configs", true),
        ("Secret", "secrets", true),
    ] {
        let (collection, one) = crud(kind, plural, appliable);
        paths.insert(format!("/api/v1/{plural}"), collection);
        paths.insert(format!("/api/v1/{plural}/{{name}}"), one);
    }
    paths["/api/v1/images"]["post"] = json!({
        "summary": "Import an OCI image-layout archive (tar, optionally gzip)",
        "parameters": [{ "name": "name", "in": "query", "schema": { "type": "string" },
            "description": "Reference to import as; defaults to the archive's ref name" }],
        "requestBody": { "required": true, "content": { "application/x-tar": { "schema": { "type": "string", "format": "binary" } } } },
        "responses": { "201": { "description": "Imported", "content": { "application/json": {
            "schema": { "$ref": "#/components/schemas/Image" } } } },
            "400": { "$ref": "#/components/responses/Error" }, "413": { "$ref": "#/components/responses/Error" } }
    });
    paths.insert(
        "/api/v1/devices/{name}/manifest".into(),
        json!({ "get": { "summary": "The device's desired manifest",
            "parameters": [{ "name": "name", "in": "path", "required": true, "schema": { "type": "string" } }],
            "responses": { "200": { "description": "Desired manifest" }, "404": { "$ref": "#/components/responses/Error" } } } }),
    );
    paths.insert(
        "/api/v1/devices/{name}/usage".into(),
        json!({ "get": { "summary": "What the device's containers use, as it last reported (memory only, never stored)",
            "parameters": [{ "name": "name", "in": "path", "required": true, "schema": { "type": "string" } }],
            "responses": { "200": { "description": "CPU millicores and working-set bytes per container", "content": {
                "application/json": { "schema": { "type": "object", "properties": {
                    "device": { "type": "string" }, "sampledAt": { "type": ["string", "null"], "format": "date-time" },
                    "containers": { "type": "array", "items": { "type": "object", "properties": {
                        "app": { "type": "string" }, "name": { "type": "string" },
                        "cpuMillis": { "type": "integer" }, "memoryBytes": { "type": "integer" } } } } } } } } },
                "403": { "$ref": "#/components/responses/Error" }, "404": { "$ref": "#/components/responses/Error" } } } }),
    );
    paths.insert(
        "/api/v1/devices/{name}/decommission".into(),
        json!({ "post": { "summary": "Retire a device: its connections close, its certificates open nothing more, nothing is placed on it; the record stays (operator)",
            "parameters": [{ "name": "name", "in": "path", "required": true, "schema": { "type": "string" } }],
            "responses": { "200": { "description": "The device, Decommissioned" }, "403": { "$ref": "#/components/responses/Error" },
                "404": { "$ref": "#/components/responses/Error" } } } }),
    );
    for (verb, summary) in [
        (
            "approve",
            "Let a Quarantined device back in: its next renewal request (with the key it asked with) gets a certificate (operator)",
        ),
        ("reject", "Refuse a Quarantined device for good: it is decommissioned (operator)"),
    ] {
        paths.insert(
            format!("/api/v1/devices/{{name}}/{verb}"),
            json!({ "post": { "summary": summary,
                "parameters": [{ "name": "name", "in": "path", "required": true, "schema": { "type": "string" } }],
                "responses": { "200": { "description": "The device" }, "403": { "$ref": "#/components/responses/Error" },
                    "404": { "$ref": "#/components/responses/Error" },
                    "409": { "description": "The device is not Quarantined", "$ref": "#/components/responses/Error" } } } }),
        );
    }
    let ca_status = json!({ "description": "`fleet.fingerprint`, `next` (fingerprint, stagedAt) or null, `previous` (fingerprints), `changedAt`, `devices`, `notSeenSinceStaged`, `onPreviousCa` (device names), `trustedPem` (every CA to trust for the hub)" });
    paths.insert(
        "/api/v1/ca".into(),
        json!({ "get": { "summary": "The fleet CA and its rotation", "responses": { "200": ca_status } } }),
    );
    let force = json!([{ "name": "force", "in": "query", "schema": { "type": "boolean" }, "description": "Go ahead although the devices named in the refusal would be cut off" }]);
    for (step, summary, force) in [
        (
            "rotate",
            "Stage a new fleet CA: trusted, and handed to every device that connects (admin)",
            json!([]),
        ),
        (
            "activate",
            "Make the staged CA the fleet CA; devices renew onto it (admin). Refused while devices have not connected since it was staged",
            force.clone(),
        ),
        (
            "retire",
            "Stop trusting the CAs the fleet CA replaced (admin). Refused while devices hold only their certificates",
            force,
        ),
    ] {
        paths.insert(
            format!("/api/v1/ca/{step}"),
            json!({ "post": { "summary": summary, "parameters": force,
                "responses": { "200": ca_status, "403": { "$ref": "#/components/responses/Error" },
                    "409": { "$ref": "#/components/responses/Error" } } } }),
        );
    }
    paths.insert(
        "/api/v1/audit".into(),
        json!({ "get": { "summary": "The audit log: every mutating call by a valid token, oldest first (admin)",
            "parameters": [
                { "name": "since", "in": "query", "schema": { "type": "string" }, "description": "RFC 3339 time, or a duration back from now (1h, 7d)" },
                { "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": 10000 }, "description": "The newest this many entries (default 1000)" }],
            "responses": { "200": { "description": "`items`: id, at, tokenId, role, remote, method, path, status; `truncated`" },
                "422": { "$ref": "#/components/responses/Error" } } } }),
    );
    paths.insert(
        "/api/v1/backup".into(),
        json!({ "get": { "summary": "A backup of the whole store at one revision (admin, fleet-wide token; audited). Holds the fleet CA's private key; Secrets only sealed, not the hub key (secrets.key)",
            "responses": { "200": { "description": "The backup file (`flotilla backup create` writes it, `flotilla backup restore` reads it); header x-flotilla-backup-revision",
                "content": { "application/octet-stream": { "schema": { "type": "string", "format": "binary" } } } },
                "403": { "$ref": "#/components/responses/Error" },
                "503": { "$ref": "#/components/responses/Error" } } } }),
    );
    paths.insert(
        "/api/v1/apps/{name}/placement".into(),
        json!({ "get": { "summary": "The scheduler's verdict on every device for this app: placed, or why not",
            "parameters": [{ "name": "name", "in": "path", "required": true, "schema": { "type": "string" } }],
            "responses": { "200": { "description": "Verdicts", "content": { "application/json": { "schema": {
                "type": "object", "properties": { "app": { "type": "string" }, "placedDevices": { "type": "integer" },
                "devices": { "type": "array", "items": { "type": "object", "properties": {
                    "device": { "type": "string" }, "placed": { "type": "boolean" },
                    "selected": { "type": "boolean" }, "reason": { "type": "string" } } } } } } } } },
                "404": { "$ref": "#/components/responses/Error" } } } }),
    );
    let name = json!({ "name": "name", "in": "path", "required": true, "schema": { "type": "string" } });
    let q = |n: &str, t: Value, d: &str| json!({ "name": n, "in": "query", "schema": t, "description": d });
    let errors = json!({
        "400": { "$ref": "#/components/responses/Error" }, "404": { "$ref": "#/components/responses/Error" },
        "409": { "$ref": "#/components/responses/Error" }, "503": { "$ref": "#/components/responses/Error" } });
    let device = q("device", json!({ "type": "string" }), "Needed when the app runs on several devices");
    let container = q("container", json!({ "type": "string" }), "Needed when the app has several containers");
    let mut logs_responses = json!({ "200": { "description": "The log (stdout and stderr as written), streamed",
        "content": { "text/plain": { "schema": { "type": "string" } } } } });
    logs_responses.as_object_mut().expect("object").extend(errors.as_object().expect("object").clone());
    paths.insert(
        "/api/v1/apps/{name}/logs".into(),
        json!({ "get": { "summary": "A container's log, from the device through its connection to the hub",
            "parameters": [name.clone(), device.clone(), container.clone(),
                q("follow", json!({ "type": "boolean" }), "Keep streaming what the container writes"),
                q("tailLines", json!({ "type": "integer", "minimum": 0 }), "Only the last lines"),
                q("sinceSeconds", json!({ "type": "integer", "minimum": 1 }), "Only what was written in this last while (to within 2 s)")],
            "responses": logs_responses } }),
    );
    let mut exec_responses = json!({ "101": { "description": "WebSocket: binary messages carry a channel byte (0 stdin, 1 stdout, 2 stderr); text messages are JSON: resize and stdinEof from the client, exitCode or error last from the hub" } });
    exec_responses.as_object_mut().expect("object").extend(errors.as_object().expect("object").clone());
    paths.insert(
        "/api/v1/apps/{name}/exec".into(),
        json!({ "get": { "summary": "Run a command in a container (WebSocket; operators; audited)",
            "parameters": [name, device, container,
                q("command", json!({ "type": "array", "items": { "type": "string" }, "minItems": 1, "maxItems": 256 }), "Repeat for each argument"),
                q("stdin", json!({ "type": "boolean" }), "Pass the client's input"),
                q("tty", json!({ "type": "boolean" }), "Run on a terminal"),
                q("cols", json!({ "type": "integer", "minimum": 0, "maximum": 65535 }), "Terminal width"),
                q("rows", json!({ "type": "integer", "minimum": 0, "maximum": 65535 }), "Terminal height")],
            "responses": exec_responses } }),
    );
    paths.insert(
        "/api/v1/enrolment-tokens".into(),
        json!({
            "get": { "summary": "List enrolment tokens (without secrets)", "responses": { "200": { "description": "Tokens" } } },
            "post": { "summary": "Create an enrolment token; the secret is returned once",
                "requestBody": { "content": { "application/json": { "schema": { "type": "object", "additionalProperties": false, "properties": {
                    "ttl": { "type": "string", "examples": ["24h"] }, "maxUses": { "type": "integer", "minimum": 1 },
                    "labels": { "type": "object", "additionalProperties": { "type": "string" } },
                    "allowLabels": { "type": "array", "maxItems": 64, "items": { "type": "string" },
                        "description": "Labels devices may set themselves: `key`, `key=value` or `*`; default none but the token's own",
                        "examples": [["role", "zone=front"]] },
                    "site": { "type": "string" }, "description": { "type": "string" } } } } } },
                "responses": { "201": { "description": "Created, with `token`" }, "422": { "$ref": "#/components/responses/Error" } } }
        }),
    );
    paths.insert(
        "/api/v1/enrolment-tokens/{id}".into(),
        json!({ "delete": { "summary": "Revoke an enrolment token",
            "parameters": [{ "name": "id", "in": "path", "required": true, "schema": { "type": "string" } }],
            "responses": { "200": { "description": "Deleted" }, "404": { "$ref": "#/components/responses/Error" } } } }),
    );
    paths.insert(
        "/api/v1/api-tokens".into(),
        json!({
            "get": { "summary": "List API tokens (admin)", "responses": { "200": { "description": "Tokens" } } },
            "post": { "summary": "Create an API token (admin); the secret is returned once",
                "requestBody": { "content": { "application/json": { "schema": { "type": "object", "additionalProperties": false, "properties": {
                    "role": { "enum": ["viewer", "operator", "admin"] }, "description": { "type": "string" },
                    "ttl": { "type": "string", "description": "How long the token is valid; default 90d, at most 1825d", "examples": ["30d"] },
                    "sites": { "type": "array", "maxItems": 256, "items": { "type": "string" },
                        "description": "Sites the token may see and change (viewer and operator only); empty: every site" } } } } } },
                "responses": { "201": { "description": "Created, with `token`" }, "422": { "$ref": "#/components/responses/Error" } } }
        }),
    );
    paths.insert(
        "/api/v1/api-tokens/{id}".into(),
        json!({ "delete": { "summary": "Revoke an API token (admin)",
            "parameters": [{ "name": "id", "in": "path", "required": true, "schema": { "type": "string" } }],
            "responses": { "200": { "description": "Deleted" } } } }),
    );
    paths.insert(
        "/api/v1/cluster".into(),
        json!({ "get": { "summary": "Hub and Raft status", "responses": { "200": { "description": "Status" } } } }),
    );
    paths.insert(
        "/healthz".into(),
        json!({ "get": { "summary": "Liveness", "security": [], "responses": { "200": { "description": "ok" } } } }),
    );
    paths.insert(
        "/metrics".into(),
        json!({ "get": { "summary": "Prometheus metrics, as OpenMetrics text (a viewer token for every site)",
            "responses": { "200": { "description": "The hub's series",
                "content": { "application/openmetrics-text": { "schema": { "type": "string" } } } },
                "401": { "description": "No valid token" },
                "403": { "description": "The token is scoped to sites: metrics are fleet-wide" } } } }),
    );
    paths.insert(
        "/api/v1/openapi.json".into(),
        json!({ "get": { "summary": "This document", "responses": { "200": { "description": "OpenAPI" } } } }),
    );

    let affinity = json!({ "type": "array", "items": { "type": "object", "required": ["app"], "properties": {
        "app": { "type": "string" }, "scope": { "enum": ["Device", "Site"] } } } });
    let selector = json!({ "type": "object", "additionalProperties": false, "properties": {
        "matchLabels": { "type": "object", "additionalProperties": { "type": "string" } },
        "matchExpressions": { "type": "array", "items": { "type": "object", "required": ["key", "operator"], "properties": {
            "key": { "type": "string" }, "operator": { "enum": ["In", "NotIn", "Exists", "DoesNotExist"] },
            "values": { "type": "array", "items": { "type": "string" } } } } } } });
    let quantity = json!({ "oneOf": [{ "type": "string" }, { "type": "integer", "minimum": 0 }] });
    let exec = json!({ "type": "object", "required": ["command"], "properties": {
        "command": { "type": "array", "minItems": 1, "items": { "type": "string" } } } });
    let http_get = json!({ "type": "object", "required": ["port"], "properties": {
        "path": { "type": "string", "default": "/" }, "port": { "type": "integer", "minimum": 1, "maximum": 65535 },
        "headers": { "type": "array", "maxItems": 16, "items": { "type": "array", "items": { "type": "string" }, "minItems": 2, "maxItems": 2 } } } });
    let seconds = json!({ "type": "integer", "minimum": 0, "maximum": 3600 });
    let probe = json!({ "type": ["object", "null"], "description": "Exactly one of exec, httpGet and tcpSocket", "properties": {
        "exec": exec.clone(), "httpGet": http_get.clone(),
        "tcpSocket": { "type": "object", "required": ["port"], "properties": { "port": { "type": "integer", "minimum": 1, "maximum": 65535 } } },
        "initialDelaySeconds": seconds.clone(), "periodSeconds": { "type": "integer", "minimum": 1, "maximum": 3600, "default": 10 },
        "timeoutSeconds": { "type": "integer", "minimum": 1, "maximum": 3600, "default": 1 },
        "successThreshold": { "type": "integer", "minimum": 1, "default": 1 },
        "failureThreshold": { "type": "integer", "minimum": 1, "default": 3 } } });
    let handler = json!({ "type": ["object", "null"], "description": "Exactly one of exec and httpGet", "properties": {
        "exec": exec, "httpGet": http_get } });
    let strings = json!({ "type": "array", "items": { "type": "string" } });
    let key_ref = json!({ "type": ["object", "null"], "required": ["name", "key"], "properties": {
        "name": { "type": "string" }, "key": { "type": "string" } } });
    let container = json!({ "type": "object", "required": ["name", "image"], "additionalProperties": false, "properties": {
        "name": { "type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63 },
        "image": { "type": "string", "examples": ["demo-httpd:latest"] },
        "command": { "type": "array", "items": { "type": "string" } },
        "args": { "type": "array", "items": { "type": "string" } },
        "env": { "type": "array", "items": { "type": "object", "required": ["name"], "properties": {
            "name": { "type": "string" }, "value": { "type": "string" },
            "valueFrom": { "type": ["object", "null"], "properties": { "config": key_ref.clone(), "secret": key_ref } } } } },
        "ports": { "type": "array", "items": { "type": "object", "required": ["containerPort"], "properties": {
            "name": { "type": "string" }, "containerPort": { "type": "integer", "minimum": 1, "maximum": 65535 },
            "hostPort": { "type": ["integer", "null"], "minimum": 1, "maximum": 65535 }, "protocol": { "enum": ["TCP", "UDP"] } } } },
        "resources": { "type": "object", "properties": {
            "limits": { "type": "object", "properties": { "cpu": quantity, "memory": quantity, "pids": { "type": "integer" } } },
            "requests": { "type": "object", "properties": { "cpu": quantity, "memory": quantity } } } },
        "workingDir": { "type": "string" },
        "volumeMounts": { "type": "array", "maxItems": 32, "items": { "type": "object", "required": ["name", "mountPath"], "properties": {
            "name": { "type": "string" }, "mountPath": { "type": "string" }, "readOnly": { "type": "boolean" } } } },
        "devices": { "type": "array", "maxItems": 32, "items": { "type": "object", "required": ["hostPath"], "properties": {
            "hostPath": { "type": "string", "pattern": "^/dev/" }, "containerPath": { "type": "string" },
            "permissions": { "type": "string", "pattern": "^[rwm]{0,3}$" } } } },
        "livenessProbe": probe.clone(), "readinessProbe": probe.clone(), "startupProbe": probe,
        "lifecycle": { "type": "object", "properties": { "postStart": handler.clone(), "preStop": handler } },
        "security": { "type": "object", "properties": {
            "privileged": { "type": "boolean" }, "addCapabilities": strings.clone(), "dropCapabilities": strings.clone(),
            "runAsUser": { "type": ["integer", "null"] }, "runAsGroup": { "type": ["integer", "null"] },
            "readOnlyRootFilesystem": { "type": "boolean" } } } } });
    let object_ref = json!({ "type": ["object", "null"], "required": ["name"], "properties": { "name": { "type": "string" } } });
    let volume = json!({ "type": "object", "required": ["name"], "description": "Exactly one source", "properties": {
        "name": { "type": "string" }, "persistent": { "type": ["object", "null"] },
        "hostPath": { "type": ["object", "null"], "required": ["path"], "properties": { "path": { "type": "string" } } },
        "tmpfs": { "type": ["object", "null"], "properties": { "sizeBytes": { "type": ["integer", "null"], "minimum": 4096 } } },
        "config": object_ref.clone(), "secret": object_ref } });
    let apps = json!({ "type": ["array", "null"], "items": { "type": "string" } });
    json!({
        "openapi": "3.1.0",
        "info": { "title": "Flotilla hub API", "version": env!("CARGO_PKG_VERSION") },
        "security": [{ "bearer": [] }],
        "paths": paths,
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "responses": { "Error": { "description": "An error; `fields` names the offending fields", "content": {
                "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } } },
            "schemas": {
                "Error": { "type": "object", "properties": { "error": { "type": "string" }, "message": { "type": "string" },
                    "status": { "type": "integer", "description": "The HTTP status, in a watch's ERROR event" },
                    "fields": { "type": "array", "items": { "type": "object", "properties": {
                        "field": { "type": "string" }, "message": { "type": "string" } } } } } },
                "ObjectMeta": { "type": "object", "required": ["name"], "additionalProperties": false, "properties": {
                    "name": { "type": "string" },
                    "labels": { "type": "object", "additionalProperties": { "type": "string" } },
                    "annotations": { "type": "object", "additionalProperties": { "type": "string" } },
                    "uid": { "type": "string", "readOnly": true },
                    "revision": { "type": "integer", "description": "Store revision of the last write; send it back for a conditional write" },
                    "createRevision": { "type": "integer", "readOnly": true },
                    "generation": { "type": "integer", "readOnly": true },
                    "createdAt": { "type": ["string", "null"], "format": "date-time", "readOnly": true } } },
                "Site": object_schema("Site", json!({ "type": "object", "properties": {
                    "displayName": { "type": "string" }, "location": { "type": "string" } } }), json!({ "readOnly": true })),
                "Device": object_schema("Device", json!({ "type": "object", "properties": {
                    "site": { "type": "string" }, "unschedulable": { "type": "boolean" },
                    "taints": { "type": "array", "items": { "type": "object", "required": ["key"], "properties": {
                        "key": { "type": "string" }, "value": { "type": "string" },
                        "effect": { "enum": ["NoSchedule", "NoExecute"] } } } } } }), json!({ "readOnly": true,
                    "type": "object", "properties": { "phase": { "enum": ["Pending", "Online", "Offline"] } } })),
                "App": object_schema("App", json!({ "type": "object", "required": ["containers"], "properties": {
                    "selector": selector,
                    "placement": { "type": "object", "properties": { "sites": { "type": "array", "items": { "type": "string" } },
                        "maxPerSite": { "type": ["integer", "null"], "minimum": 1 },
                        "tolerations": { "type": "array", "items": { "type": "object", "properties": {
                            "key": { "type": "string" }, "operator": { "enum": ["Equal", "Exists"] },
                            "value": { "type": "string" }, "effect": { "enum": ["NoSchedule", "NoExecute", null] } } } },
                        "affinity": affinity.clone(),
                        "antiAffinity": affinity } },
                    "containers": { "type": "array", "minItems": 1, "maxItems": 16, "items": container.clone() },
                    "initContainers": { "type": "array", "maxItems": 16, "items": container },
                    "volumes": { "type": "array", "maxItems": 32, "items": volume },
                    "terminationGracePeriodSeconds": { "type": ["integer", "null"], "minimum": 0, "maximum": 3600 },
                    "networkPolicy": { "type": ["object", "null"], "properties": {
                        "ingressApps": apps.clone(), "egressApps": apps, "egressCidrs": { "type": ["array", "null"], "items": { "type": "string" } } } },
                    "userNamespace": { "type": "boolean" },
                    "restartPolicy": { "enum": ["Always", "OnFailure", "Never"] },
                    "network": { "enum": ["Host", "None", "Isolated"] } } }),
                    json!({ "readOnly": true, "type": "object", "properties": {
                        "phase": { "enum": ["Pending", "Progressing", "Running", "Degraded"] } } })),
                "Image": object_schema("Image", json!({ "readOnly": true }), json!({ "readOnly": true })),
                "Config": object_schema("Config", config_spec.clone(), config_status.clone()),
                "Secret": object_schema("Secret", config_spec, config_status),
            }
        }
    })
}

#[cfg(test)]
mod tests {
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
            "/healthz",
            "/metrics",
        ] {
            assert!(doc["paths"].get(path).is_some(), "{path} missing from the OpenAPI document");
        }
        assert!(doc["paths"]["/api/v1/images"]["post"].is_object());
        assert!(doc["paths"]["/api/v1/apps/{name}"]["put"].is_object());
        assert!(doc["paths"]["/api/v1/images/{name}"].get("put").is_none());
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
            for code in ["200", "410", "422", "503"] {
                assert!(get["responses"].get(code).is_some(), "{plural}: {code} undocumented");
            }
            assert!(get["responses"]["200"]["content"].get("text/event-stream").is_some());
        }
    }
}
