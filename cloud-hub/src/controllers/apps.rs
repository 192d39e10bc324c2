//! App status: how far each app's devices have converged on its current generation.
//!
//! Kept device by device ([`AppRows`]): a device's report changes one row of each app
//! placed on it, and the status is rebuilt from counters and the few devices that are
//! not there yet, so an app on ten thousand devices costs a lookup per report, not a
//! scan. The stored status is small and bounded: counts, and at most
//! [`MAX_STATUS_ROWS`] devices that are not running (the full picture is each device's
//! own status).

use shared_proto::manifest::ContainerPhase;
use shared_proto::{
    App, AppDevicePhase, AppDeviceStatus, AppPhase, AppStatus, Device, DevicePhase, RestartPolicy,
};
use std::collections::{BTreeMap, BTreeSet};

/// Most not-running devices an app's stored status lists.
pub const MAX_STATUS_ROWS: usize = 20;

fn settled(phase: AppDevicePhase) -> bool {
    matches!(phase, AppDevicePhase::Running | AppDevicePhase::Completed)
}

/// One app's row per placed device, with running counts.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct AppRows {
    rows: BTreeMap<String, AppDeviceStatus>,
    /// Devices whose row is neither Running nor Completed.
    unsettled: BTreeSet<String>,
    n_troubled: u32,
}

impl AppRows {
    /// Sets `device`'s row; `None` when the app is no longer placed there.
    pub fn set(&mut self, device: &str, row: Option<AppDeviceStatus>) {
        if let Some(old) = self.rows.remove(device) {
            self.unsettled.remove(device);
            if troubled(old.phase) {
                self.n_troubled -= 1;
            }
        }
        if let Some(row) = row {
            if !settled(row.phase) {
                self.unsettled.insert(device.to_string());
            }
            if troubled(row.phase) {
                self.n_troubled += 1;
            }
            self.rows.insert(device.to_string(), row);
        }
    }

    pub fn devices(&self) -> impl Iterator<Item = &String> {
        self.rows.keys()
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

fn troubled(phase: AppDevicePhase) -> bool {
    matches!(phase, AppDevicePhase::Failed | AppDevicePhase::Offline)
}

/// The row of `app` on `device` (`None`: the device is gone).
pub fn device_row(
    app: &App,
    name: &str,
    device: Option<&Device>,
    problem: Option<&String>,
) -> AppDeviceStatus {
    let (phase, message) = match device {
        None => (AppDevicePhase::Pending, "device not found".to_string()),
        Some(d) if d.status.phase != DevicePhase::Online => {
            (AppDevicePhase::Offline, format!("device is {}", d.status.phase))
        }
        Some(d) => device_phase(app, d, app.metadata.generation, problem),
    };
    AppDeviceStatus { device: name.to_string(), phase, message }
}

/// What an app's status should be, from its rows. `unplaced` is the scheduler's
/// explanation (device → reason) for devices that want the app but cannot take it.
pub fn app_status(app: &App, rows: &AppRows, unplaced: Option<&BTreeMap<String, String>>) -> AppStatus {
    let n_desired = rows.rows.len() as u32;
    let n_running = n_desired - rows.unsettled.len() as u32;
    let phase = if n_desired == 0 {
        AppPhase::Pending
    } else if n_running == n_desired {
        AppPhase::Running
    } else if rows.n_troubled > 0 {
        AppPhase::Degraded
    } else {
        AppPhase::Progressing
    };
    let shown: Vec<AppDeviceStatus> =
        rows.unsettled.iter().take(MAX_STATUS_ROWS).filter_map(|d| rows.rows.get(d).cloned()).collect();
    let message = if n_desired == 0 {
        match unplaced.and_then(|u| u.iter().next()) {
            Some((device, why)) => format!("no device can run it; {device}: {why}"),
            None => "no device matches the selector".to_string(),
        }
    } else {
        shown.first().map(|r| format!("{}: {}", r.device, r.message)).unwrap_or_default()
    };
    AppStatus {
        phase,
        observed_generation: app.metadata.generation,
        n_desired,
        n_running,
        devices: shown,
        message,
    }
}

fn device_phase(
    app: &App,
    device: &Device,
    generation: u64,
    problem: Option<&String>,
) -> (AppDevicePhase, String) {
    let reported: Vec<_> = device
        .status
        .containers
        .iter()
        .filter(|c| c.app == app.metadata.name && c.generation == generation)
        .collect();
    if let Some(f) = reported.iter().find(|c| c.phase == ContainerPhase::Failed) {
        return (AppDevicePhase::Failed, format!("container {}: {}", f.name, f.reason));
    }
    if let Some(p) = problem {
        return (AppDevicePhase::Pending, p.clone());
    }
    let mut n_ok = 0;
    let mut completed = 0;
    for spec in &app.spec.containers {
        match reported.iter().find(|c| c.name == spec.name && !c.init) {
            Some(c) if c.phase == ContainerPhase::Running && c.ready => n_ok += 1,
            Some(c) if c.phase == ContainerPhase::Exited => {
                let ok = c.exit_code == Some(0);
                let stays_down = match app.spec.restart_policy {
                    RestartPolicy::Never => true,
                    RestartPolicy::OnFailure => ok,
                    RestartPolicy::Always => false,
                };
                if stays_down && ok {
                    completed += 1;
                } else if stays_down {
                    let code = c.exit_code.map_or("unknown".to_string(), |c| c.to_string());
                    return (AppDevicePhase::Failed, format!("container {} exited with code {code}", c.name));
                }
            }
            _ => {}
        }
    }
    let n = app.spec.containers.len();
    if n_ok + completed == n && n > 0 {
        if completed == n {
            (AppDevicePhase::Completed, String::new())
        } else {
            (AppDevicePhase::Running, String::new())
        }
    } else {
        let waiting = reported
            .iter()
            .find(|c| c.phase != ContainerPhase::Running && !c.reason.is_empty())
            .map(|c| format!("container {}: {}", c.name, c.reason))
            .or_else(|| {
                reported
                    .iter()
                    .find(|c| c.phase == ContainerPhase::Running && !c.ready && !c.init)
                    .map(|c| format!("container {}: not ready ({})", c.name, or_probe(&c.reason)))
            })
            .unwrap_or_else(|| format!("{} of {n} containers running", n_ok));
        (AppDevicePhase::Pending, waiting)
    }
}

fn or_probe(reason: &str) -> &str {
    if reason.is_empty() { "its readiness probe has not passed" } else { reason }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_proto::manifest::ObservedContainer;
    use shared_proto::{AppSpec, ContainerSpec, DeviceSpec, ObjectMeta};

    fn app() -> App {
        let mut meta = ObjectMeta::named("web");
        meta.generation = 2;
        App::new(
            meta,
            AppSpec {
                containers: vec![ContainerSpec {
                    name: "httpd".into(),
                    image: "x:1".into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
        )
    }

    fn device(
        name: &str,
        phase: DevicePhase,
        containers: Vec<(u64, ContainerPhase, &str)>,
    ) -> (String, Device) {
        let mut d = Device::new(ObjectMeta::named(name), DeviceSpec::default());
        d.status.phase = phase;
        d.status.containers = containers
            .into_iter()
            .map(|(generation, phase, reason)| ObservedContainer {
                app: "web".into(),
                generation,
                name: "httpd".into(),
                ready: phase == ContainerPhase::Running,
                phase,
                reason: reason.into(),
                ..Default::default()
            })
            .collect();
        (name.to_string(), d)
    }

    #[test]
    fn a_running_container_that_is_not_ready_keeps_its_device_pending() {
        let app = app();
        let (_, mut d) = device("a", DevicePhase::Online, vec![(2, ContainerPhase::Running, "")]);
        d.status.containers[0].ready = false;
        let (phase, message) = device_phase(&app, &d, 2, None);
        assert_eq!(phase, AppDevicePhase::Pending);
        assert!(message.contains("httpd: not ready"), "{message}");
        d.status.containers[0].reason = "readiness probe: connection refused (3 failures)".into();
        let (_, message) = device_phase(&app, &d, 2, None);
        assert!(message.contains("connection refused"), "{message}");
        d.status.containers[0].ready = true;
        assert_eq!(device_phase(&app, &d, 2, None).0, AppDevicePhase::Running);
    }

    /// The status of `app` placed on `placed`, from scratch.
    fn app_status_of(
        app: &App,
        placed: &[&str],
        devices: &BTreeMap<String, Device>,
        unplaced: Option<&BTreeMap<String, String>>,
    ) -> AppStatus {
        let mut rows = AppRows::default();
        for name in placed {
            rows.set(name, Some(device_row(app, name, devices.get(*name), None)));
        }
        app_status(app, &rows, unplaced)
    }

    #[test]
    fn running_when_every_device_runs_the_current_generation() {
        let devices = BTreeMap::from([
            device("a", DevicePhase::Online, vec![(2, ContainerPhase::Running, "")]),
            device("b", DevicePhase::Online, vec![(1, ContainerPhase::Running, "")]),
        ]);
        let s = app_status_of(&app(), &["a", "b"], &devices, None);
        assert_eq!((s.phase, s.n_desired, s.n_running), (AppPhase::Progressing, 2, 1));
        assert!(s.message.starts_with("b:"), "{}", s.message);
        let s = app_status_of(&app(), &["a"], &devices, None);
        assert_eq!(s.phase, AppPhase::Running);
    }

    #[test]
    fn failures_and_offline_devices_degrade() {
        let devices = BTreeMap::from([
            device("a", DevicePhase::Online, vec![(2, ContainerPhase::Failed, "image pull failed")]),
            device("b", DevicePhase::Offline, vec![(2, ContainerPhase::Running, "")]),
        ]);
        let s = app_status_of(&app(), &["a", "b"], &devices, None);
        assert_eq!(s.phase, AppPhase::Degraded);
        assert_eq!(s.devices[0].phase, AppDevicePhase::Failed);
        assert!(s.devices[0].message.contains("image pull failed"));
        assert_eq!(s.devices[1].phase, AppDevicePhase::Offline);
    }

    #[test]
    fn nothing_placed_explains_why() {
        let unplaced = BTreeMap::from([("a".to_string(), "not enough memory".to_string())]);
        let s = app_status_of(&app(), &[], &BTreeMap::new(), Some(&unplaced));
        assert_eq!(s.phase, AppPhase::Pending);
        assert!(s.message.contains("not enough memory"));
        let s = app_status_of(&app(), &[], &BTreeMap::new(), None);
        assert_eq!(s.message, "no device matches the selector");
    }

    #[test]
    fn rows_change_one_device_at_a_time_and_the_listing_is_bounded() {
        let a = app();
        let mut rows = AppRows::default();
        let pending = |d: &str| AppDeviceStatus {
            device: d.into(),
            phase: AppDevicePhase::Pending,
            message: "pulling".into(),
        };
        for i in 0..1000 {
            rows.set(&format!("d{i:04}"), Some(pending(&format!("d{i:04}"))));
        }
        let s = app_status(&a, &rows, None);
        assert_eq!(
            (s.phase, s.n_desired, s.n_running, s.devices.len()),
            (AppPhase::Progressing, 1000, 0, MAX_STATUS_ROWS)
        );
        assert_eq!(s.message, "d0000: pulling");
        for i in 0..1000 {
            let d = format!("d{i:04}");
            rows.set(
                &d,
                Some(AppDeviceStatus {
                    device: d.clone(),
                    phase: AppDevicePhase::Running,
                    message: String::new(),
                }),
            );
        }
        rows.set(
            "d0007",
            Some(AppDeviceStatus {
                device: "d0007".into(),
                phase: AppDevicePhase::Offline,
                message: "device is Offline".into(),
            }),
        );
        let s = app_status(&a, &rows, None);
        assert_eq!((s.phase, s.n_running), (AppPhase::Degraded, 999));
        assert_eq!(s.devices.len(), 1);
        rows.set("d0007", None);
        let s = app_status(&a, &rows, None);
        assert_eq!((s.phase, s.n_desired, s.n_running), (AppPhase::Running, 999, 999));
    }

    #[test]
    fn run_to_completion_apps() {
        let mut a = app();
        a.spec.restart_policy = RestartPolicy::Never;
        let (n, mut d) = device("a", DevicePhase::Online, vec![(2, ContainerPhase::Exited, "")]);
        d.status.containers[0].exit_code = Some(0);
        let devices = BTreeMap::from([(n.clone(), d.clone())]);
        let s = app_status_of(&a, &["a"], &devices, None);
        assert_eq!((s.phase, s.n_running), (AppPhase::Running, 1));
        assert!(s.devices.is_empty(), "only unsettled devices are listed");
        d.status.containers[0].exit_code = Some(1);
        let devices = BTreeMap::from([(n, d)]);
        let s = app_status_of(&a, &["a"], &devices, None);
        assert_eq!(s.phase, AppPhase::Degraded);
    }
}
