//! Backup and restore with real hub processes: objects of every kind an operator makes
//! are backed up through the API, the hub's data directory is wiped, and a hub restored
//! into a new one serves every object with the same revisions, takes the old tokens,
//! holds the same hub key for its Secrets, and gives new writes higher revisions. Bad
//! files and used directories are refused with messages that say what to do, and leave
//! the target untouched. Needs no root: no agent runs.

use firmware_tests::{Hub, bin, wait_until};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

const OBJECTS: &str = r#"apiVersion: flotilla.dev/v1
kind: Site
metadata: {name: berlin}
spec: {location: Berlin}
---
apiVersion: flotilla.dev/v1
kind: Config
metadata: {name: pos-conf}
spec:
  data: {mode: live}
---
apiVersion: flotilla.dev/v1
kind: Secret
metadata: {name: pos-creds}
spec:
  data: {password: Tr0ub4dor-and-3}
---
apiVersion: flotilla.dev/v1
kind: App
metadata: {name: till}
spec:
  selector:
    matchLabels: {role: till}
  containers:
    - name: main
      image: till:1
"#;

const KINDS: [&str; 4] = ["sites", "configs", "secrets", "apps"];

/// `flotilla` with no hub context (restore works offline).
fn flotilla(args: &[&str]) -> Output {
    Command::new(bin("flotilla"))
        .args(args)
        .env_remove("FLOTILLA_CONTEXT")
        .env_remove("FLOTILLA_DATA_DIR")
        .output()
        .expect("running flotilla")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Every item of every kind, as the API lists them (metadata with revisions included).
fn listing(hub: &Hub) -> Vec<Value> {
    KINDS.iter().map(|k| hub.get(k, None).expect("list")["items"].clone()).collect()
}

/// The restore `flotilla backup restore` is refused with: its message must contain `says`,
/// and `target` must still be as it was (`None`: missing).
fn refused(file: &Path, target: &Path, extra: &[&str], says: &str, before: Option<Vec<String>>) {
    let mut args = vec!["backup", "restore", file.to_str().unwrap(), "--data-dir", target.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = flotilla(&args);
    let msg = text(&out);
    assert!(!out.status.success(), "restore of {} should fail: {msg}", file.display());
    assert!(msg.contains(says), "{says:?} not in: {msg}");
    let after = std::fs::read_dir(target)
        .ok()
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect::<Vec<_>>());
    assert_eq!(after, before, "{}: the target is untouched", file.display());
}

#[test]
fn backup_wipe_restore_brings_every_object_back_with_its_revision() {
    let dir = tempfile::tempdir().unwrap();
    let old_dir = dir.path().join("old");
    std::fs::create_dir_all(&old_dir).unwrap();
    let mut hub = Hub::start(&old_dir);
    let out = hub.apply(dir.path(), OBJECTS);
    assert!(out.status.success(), "{}", text(&out));
    // An API token made now must work on the restored hub.
    let viewer = hub.cli_ok(&["api-token", "create", "--role", "viewer"]).trim().to_string();
    hub.enrolment_token(&["--ttl", "30d"]);
    // The app controller writes the app's status once; back up after it has.
    wait_until("the app's status", Duration::from_secs(30), || {
        hub.get("apps", Some("till")).filter(|a| !a["status"]["phase"].is_null()).map(|_| ())
    });
    let before = listing(&hub);
    let tokens_before = hub.cli_ok(&["token", "list"]);

    let file = dir.path().join("fleet.backup");
    let out = hub.cli_ok(&["backup", "create", file.to_str().unwrap()]);
    assert!(out.contains("secrets.key"), "the operator is told about the hub key: {out}");
    let revision: u64 = out
        .split("revision ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no revision in {out}"));
    for items in &before {
        let items = items.as_array().unwrap();
        assert_eq!(items.len(), 1, "{items:?}");
        let r = items[0]["metadata"]["revision"].as_u64().unwrap();
        assert!(r > 0 && r <= revision, "object at {r}, backup at {revision}");
    }
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the backup holds the fleet CA's key");
    }
    let audit = hub.cli_ok(&["audit", "-o", "json"]);
    assert!(audit.contains("/api/v1/backup"), "the backup is audited: {audit}");
    // A viewer may not take the CA's key away.
    let out = hub.cli(&["--token", &viewer, "backup", "create", dir.path().join("v").to_str().unwrap()]);
    assert!(!out.status.success() && text(&out).contains("admin"), "{}", text(&out));
    assert!(!dir.path().join("v").exists());

    // Wipe: keep the operator's context and a copy of the hub key, lose everything else.
    let context = std::fs::read(&hub.context).unwrap();
    let key = dir.path().join("secrets.key.copy");
    std::fs::copy(hub.data_dir.join("secrets.key"), &key).unwrap();
    hub.stop();
    drop(hub);
    std::fs::remove_dir_all(&old_dir).unwrap();

    let new_dir = dir.path().join("new");
    let data_dir = new_dir.join("hub");
    // Refusals first; each leaves the target as it was.
    let bytes = std::fs::read(&file).unwrap();
    let write = |name: &str, b: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, b).unwrap();
        p
    };
    let truncated = write("truncated.backup", &bytes[..bytes.len() - 100]);
    let mut corrupt = bytes.clone();
    let at = bytes.len() - 200;
    corrupt[at] ^= 0x55;
    let corrupt = write("corrupt.backup", &corrupt);
    let mut future = bytes.clone();
    future[8..12].copy_from_slice(&2u32.to_le_bytes());
    let future = write("future.backup", &future);
    let key_arg = ["--secrets-key", key.to_str().unwrap()];
    refused(&truncated, &data_dir, &key_arg, "truncated", None);
    refused(&corrupt, &data_dir, &key_arg, "corrupt", None);
    refused(&future, &data_dir, &key_arg, "format version 2, this flotilla reads only version 1", None);
    refused(&file, &data_dir, &[], "--secrets-key", None);
    let wrong_key = write("wrong.key", &[7u8; 32]);
    refused(&file, &data_dir, &["--secrets-key", wrong_key.to_str().unwrap()], "sealed with hub key", None);
    std::fs::create_dir_all(&data_dir).unwrap();
    std::fs::write(data_dir.join("keep-me"), b"x").unwrap();
    refused(&file, &data_dir, &key_arg, "is not empty", Some(vec!["keep-me".into()]));
    std::fs::remove_dir_all(&data_dir).unwrap();

    let out = flotilla(&[
        "backup",
        "restore",
        file.to_str().unwrap(),
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--secrets-key",
        key.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(&format!("revision {revision}")), "{}", text(&out));
    // The operator's own context file (its token and the fleet CA) is not the hub's to restore.
    std::fs::write(data_dir.join("context.json"), &context).unwrap();
    let hub = Hub::start(&new_dir);

    assert_eq!(listing(&hub), before, "every object, with the same revisions");
    assert_eq!(hub.cli_ok(&["token", "list"]), tokens_before);
    assert!(hub.cli(&["--token", &viewer, "get", "sites"]).status.success(), "the viewer token works");
    // Sealing the same value again is "unchanged" only under the same hub key: the Secret's
    // keyed digest matches, so the restored hub opens what the old one sealed.
    let out = hub.apply(dir.path(), OBJECTS);
    let out = text(&out);
    assert!(out.contains("secret/pos-creds unchanged"), "{out}");
    assert!(out.contains("site/berlin unchanged"), "{out}");
    assert_eq!(listing(&hub), before, "an unchanged apply writes nothing");
    // New writes come after the backup.
    let out =
        hub.apply(dir.path(), "apiVersion: flotilla.dev/v1\nkind: Site\nmetadata: {name: cork}\nspec: {}\n");
    assert!(out.status.success(), "{}", text(&out));
    let cork = hub.get("sites", Some("cork")).unwrap();
    let cork_revision = cork["metadata"]["revision"].as_u64().unwrap();
    assert!(cork_revision > revision, "new write at {cork_revision}, backup at {revision}");
    let log = std::fs::read_to_string(hub.log_path()).unwrap();
    assert!(!log.contains("will not open"), "the right key is not warned about");
    drop(hub);

    // Without the key, even on request: refused, as the fleet CA's private key is sealed
    // with it, and nothing is written.
    let bare_dir = dir.path().join("bare");
    let bare_data = bare_dir.join("hub");
    let out = flotilla(&[
        "backup",
        "restore",
        file.to_str().unwrap(),
        "--data-dir",
        bare_data.to_str().unwrap(),
        "--without-secrets-key",
    ]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("fleet CA private key is sealed"), "{}", text(&out));
    assert!(!bare_data.join("store").exists(), "a refused restore writes nothing");
}
