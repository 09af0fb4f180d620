//! Heat and power, read from sysfs for Status — and never acted on.
//!
//! The seed slowed uploads when the device ran hot or the battery ran low. uplink does
//! not: a capture app's user is waiting for the upload, and the OS already throttles the
//! CPU when it must. So these readings only tell the user what the device is going
//! through; nothing in the engine reads them (it has no event for them at all).
//!
//! Linux: `/sys/class/thermal/thermal_zone*/{type,temp,trip_point_*_{type,temp}}` and
//! `/sys/class/power_supply/*/{type,online,capacity,capacity_level,status}`. Elsewhere the
//! directories do not exist and the report is empty.

use std::path::Path;

/// One thermal zone.
#[derive(Debug, Clone, PartialEq)]
pub struct Zone {
    pub name: String,
    pub temp_c: f64,
    /// The zone's critical trip point, if it has one.
    pub critical_c: Option<f64>,
    /// "critical" at or above the critical trip, "hot" at or above a hot trip, else "ok".
    pub state: &'static str,
}

/// The battery, when there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Battery {
    pub percent: Option<u32>,
    /// "charging", "discharging", "full", "not charging" or "unknown".
    pub status: String,
    /// "critical", "low", "normal", "high", "full" (the kernel's, or from the percentage).
    pub level: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Telemetry {
    pub thermal: Vec<Zone>,
    /// "mains", "battery", or "" when no supply says.
    pub power_source: String,
    pub battery: Option<Battery>,
}

fn read(p: &Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

/// Reads what `sys` (normally `/sys`) offers; missing or odd files are skipped.
pub fn read_from(sys: &Path) -> Telemetry {
    let mut t = Telemetry {
        thermal: thermal(&sys.join("class/thermal")),
        ..Telemetry::default()
    };
    power(&sys.join("class/power_supply"), &mut t);
    t
}

fn sorted_entries(dir: &Path, prefix: &str) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

fn thermal(dir: &Path) -> Vec<Zone> {
    let millis = |p: &Path| {
        read(p)
            .and_then(|s| s.parse::<i64>().ok())
            .map(|m| m as f64 / 1000.0)
    };
    sorted_entries(dir, "thermal_zone")
        .into_iter()
        .filter_map(|z| {
            let temp_c = millis(&z.join("temp"))?;
            let mut critical_c = None;
            let mut hot_c = None;
            for i in 0..32 {
                let Some(kind) = read(&z.join(format!("trip_point_{i}_type"))) else {
                    break;
                };
                let Some(at) = millis(&z.join(format!("trip_point_{i}_temp"))) else {
                    continue;
                };
                let slot = match kind.as_str() {
                    "critical" => &mut critical_c,
                    "hot" => &mut hot_c,
                    _ => continue,
                };
                *slot = Some(slot.map_or(at, |s: f64| s.min(at)));
            }
            let state = match (critical_c, hot_c) {
                (Some(c), _) if temp_c >= c => "critical",
                (_, Some(h)) if temp_c >= h => "hot",
                _ => "ok",
            };
            Some(Zone {
                name: read(&z.join("type")).unwrap_or_else(|| z.display().to_string()),
                temp_c,
                critical_c,
                state,
            })
        })
        .collect()
}

fn power(dir: &Path, t: &mut Telemetry) {
    let mut mains_online = None;
    for s in sorted_entries(dir, "") {
        match read(&s.join("type")).as_deref() {
            Some("Mains") | Some("USB") => {
                let online = read(&s.join("online")).as_deref() == Some("1");
                mains_online = Some(mains_online.unwrap_or(false) || online);
            }
            Some("Battery") if t.battery.is_none() => {
                let percent = read(&s.join("capacity")).and_then(|c| c.parse::<u32>().ok());
                let level = read(&s.join("capacity_level"))
                    .map(|l| l.to_lowercase())
                    .filter(|l| l != "unknown")
                    .or_else(|| {
                        percent.map(|p| match p {
                            0..=5 => "critical".to_string(),
                            6..=15 => "low".to_string(),
                            _ => "normal".to_string(),
                        })
                    })
                    .unwrap_or_else(|| "unknown".into());
                t.battery = Some(Battery {
                    percent,
                    status: read(&s.join("status"))
                        .map(|l| l.to_lowercase())
                        .unwrap_or_else(|| "unknown".into()),
                    level,
                });
            }
            _ => {}
        }
    }
    t.power_source = match (mains_online, &t.battery) {
        (Some(true), _) => "mains".into(),
        (_, Some(b)) if b.status == "discharging" => "battery".into(),
        (Some(false), Some(_)) => "battery".into(),
        _ => String::new(),
    };
}

/// Writes a sysfs-shaped tree (for tests: a hot device on a low battery, or a calm one).
pub fn write_fake(
    sys: &Path,
    temp_c: f64,
    critical_c: f64,
    battery_percent: u32,
    on_mains: bool,
) -> std::io::Result<()> {
    let z = sys.join("class/thermal/thermal_zone0");
    std::fs::create_dir_all(&z)?;
    std::fs::write(z.join("type"), "soc-thermal\n")?;
    std::fs::write(z.join("temp"), format!("{}\n", (temp_c * 1000.0) as i64))?;
    std::fs::write(z.join("trip_point_0_type"), "passive\n")?;
    std::fs::write(z.join("trip_point_0_temp"), "70000\n")?;
    std::fs::write(z.join("trip_point_1_type"), "critical\n")?;
    std::fs::write(
        z.join("trip_point_1_temp"),
        format!("{}\n", (critical_c * 1000.0) as i64),
    )?;
    let ac = sys.join("class/power_supply/AC");
    std::fs::create_dir_all(&ac)?;
    std::fs::write(ac.join("type"), "Mains\n")?;
    std::fs::write(ac.join("online"), if on_mains { "1\n" } else { "0\n" })?;
    let bat = sys.join("class/power_supply/BAT0");
    std::fs::create_dir_all(&bat)?;
    std::fs::write(bat.join("type"), "Battery\n")?;
    std::fs::write(bat.join("capacity"), format!("{battery_percent}\n"))?;
    std::fs::write(
        bat.join("status"),
        if on_mains {
            "Charging\n"
        } else {
            "Discharging\n"
        },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hot_device_on_a_low_battery_reads_as_such() {
        let tmp = tempfile::tempdir().unwrap();
        write_fake(tmp.path(), 97.5, 95.0, 4, false).unwrap();
        let t = read_from(tmp.path());
        assert_eq!(t.thermal.len(), 1);
        assert_eq!(t.thermal[0].name, "soc-thermal");
        assert_eq!(t.thermal[0].temp_c, 97.5);
        assert_eq!(t.thermal[0].critical_c, Some(95.0));
        assert_eq!(t.thermal[0].state, "critical");
        assert_eq!(t.power_source, "battery");
        let b = t.battery.unwrap();
        assert_eq!(
            (b.percent, b.level.as_str(), b.status.as_str()),
            (Some(4), "critical", "discharging")
        );
    }

    #[test]
    fn a_calm_device_on_mains_and_a_machine_without_sysfs() {
        let tmp = tempfile::tempdir().unwrap();
        write_fake(tmp.path(), 41.0, 95.0, 80, true).unwrap();
        let t = read_from(tmp.path());
        assert_eq!(t.thermal[0].state, "ok");
        assert_eq!(t.power_source, "mains");
        assert_eq!(t.battery.map(|b| b.level), Some("normal".into()));
        assert_eq!(read_from(&tmp.path().join("absent")), Telemetry::default());
    }
}
