//! App status: how far each app's devices have converged on its current generation,
//! computed from the placement and the devices' last reports.

use shared_proto::manifest::ContainerPhase;
use shared_proto::{
    App, AppDevicePhase, AppDeviceStatus, AppPhase, AppStatus, Device, DevicePhase, RestartPolicy,
};
use std::collections::{BTreeMap, BTreeSet};

/// What an app's status should be. `unplaced` and `problems` are the scheduler's and
/// the manifest planner's explanations for this app, device → reason.
pub fn app_status(
    app: &App,
    placed: &BTreeSet<String>,
    devices: &BTreeMap<String, Device>,
    unplaced: Option<&BTreeMap<String, String>>,
    problems: Option<&BTreeMap<String, String>>,
) -> AppStatus {
    let generation = app.metadata.generation;
    let mut rows = Vec::with_capacity(placed.len());
    for name in placed {
        let (phase, message) = match devices.get(name) {
            None => (AppDevicePhase::Pending, "device not found".to_string()),
            Some(d) if d.status.phase != DevicePhase::Online => {
                (AppDevicePhase::Offline, format!("device is {}", d.status.phase))
            }
            Some(d) => device_phase(app, d, generation, problems.and_then(|p| p.get(name))),
        };
        rows.push(AppDeviceStatus { device: name.clone(), phase, message });
    }
    let n_desired = rows.len() as u32;
    let n_running = rows
        .iter()
        .filter(|r| matches!(r.phase, AppDevicePhase::Running | AppDevicePhase::Completed))
        .count() as u32;
    let troubled = rows.iter().any(|r| matches!(r.phase, AppDevicePhase::Failed | AppDevicePhase::Offline));
    let phase = if n_desired == 0 {
        AppPhase::Pending
    } else if n_running == n_desired {
        AppPhase::Running
    } else if troubled {
        AppPhase::Degraded
    } else {
        AppPhase::Progressing
    };
    let message = if n_desired == 0 {
        match unplaced.and_then(|u| u.iter().next()) {
            Some((device, why)) => format!("no device can run it; {device}: {why}"),
            None => "no device matches the selector".to_string(),
        }
    } else {
        rows.iter()
            .find(|r| !matches!(r.phase, AppDevicePhase::Running | AppDevicePhase::Completed))
            .map(|r| format!("{}: {}", r.device, r.message))
            .unwrap_or_default()
    };
    AppStatus { phase, observed_generation: generation, n_desired, n_running, devices: rows, message }
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
        match reported.iter().find(|c| c.name == spec.name) {
            Some(c) if c.phase == ContainerPhase::Running => n_ok += 1,
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
            .unwrap_or_else(|| format!("{} of {n} containers running", n_ok));
        (AppDevicePhase::Pending, waiting)
    }
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
                phase,
                reason: reason.into(),
                ..Default::default()
            })
            .collect();
        (name.to_string(), d)
    }

    fn placed(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn running_when_every_device_runs_the_current_generation() {
        let devices = BTreeMap::from([
            device("a", DevicePhase::Online, vec![(2, ContainerPhase::Running, "")]),
            device("b", DevicePhase::Online, vec![(1, ContainerPhase::Running, "")]),
        ]);
        let s = app_status(&app(), &placed(&["a", "b"]), &devices, None, None);
        assert_eq!((s.phase, s.n_desired, s.n_running), (AppPhase::Progressing, 2, 1));
        assert!(s.message.starts_with("b:"), "{}", s.message);
        let s = app_status(&app(), &placed(&["a"]), &devices, None, None);
        assert_eq!(s.phase, AppPhase::Running);
    }

    #[test]
    fn failures_and_offline_devices_degrade() {
        let devices = BTreeMap::from([
            device("a", DevicePhase::Online, vec![(2, ContainerPhase::Failed, "image pull failed")]),
            device("b", DevicePhase::Offline, vec![(2, ContainerPhase::Running, "")]),
        ]);
        let s = app_status(&app(), &placed(&["a", "b"]), &devices, None, None);
        assert_eq!(s.phase, AppPhase::Degraded);
        assert_eq!(s.devices[0].phase, AppDevicePhase::Failed);
        assert!(s.devices[0].message.contains("image pull failed"));
        assert_eq!(s.devices[1].phase, AppDevicePhase::Offline);
    }

    #[test]
    fn nothing_placed_explains_why() {
        let unplaced = BTreeMap::from([("a".to_string(), "not enough memory".to_string())]);
        let s = app_status(&app(), &placed(&[]), &BTreeMap::new(), Some(&unplaced), None);
        assert_eq!(s.phase, AppPhase::Pending);
        assert!(s.message.contains("not enough memory"));
        let s = app_status(&app(), &placed(&[]), &BTreeMap::new(), None, None);
        assert_eq!(s.message, "no device matches the selector");
    }

    #[test]
    fn run_to_completion_apps() {
        let mut a = app();
        a.spec.restart_policy = RestartPolicy::Never;
        let (n, mut d) = device("a", DevicePhase::Online, vec![(2, ContainerPhase::Exited, "")]);
        d.status.containers[0].exit_code = Some(0);
        let devices = BTreeMap::from([(n.clone(), d.clone())]);
        let s = app_status(&a, &placed(&["a"]), &devices, None, None);
        assert_eq!((s.phase, s.devices[0].phase), (AppPhase::Running, AppDevicePhase::Completed));
        d.status.containers[0].exit_code = Some(1);
        let devices = BTreeMap::from([(n, d)]);
        let s = app_status(&a, &placed(&["a"]), &devices, None, None);
        assert_eq!(s.phase, AppPhase::Degraded);
    }
}
